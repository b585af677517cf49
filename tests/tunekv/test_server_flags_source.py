"""The option sets read out of the pinned vLLM and SGLang wheels (server_flags) are the servers' own:
the flags tunekv writes are there, a made-up one is not, and the ``--no-`` forms exist exactly where
each server's rules make them."""

import zipfile

from tests.tunekv.server_flags import SGLANG_VERSION, VLLM_VERSION, sglang_options, vllm_serve_options, wheel

VLLM_FLAGS = {"--block-size", "--max-num-seqs", "--max-num-batched-tokens", "--max-model-len",
              "--gpu-memory-utilization", "--tensor-parallel-size", "--enable-chunked-prefill",
              "--no-enable-chunked-prefill", "--enable-prefix-caching", "--no-enable-prefix-caching", "--port",
              "--host", "--seed", "--dtype", "--served-model-name"}
SGLANG_FLAGS = {"--model-path", "--page-size", "--max-running-requests", "--chunked-prefill-size",
                "--max-prefill-tokens", "--mem-fraction-static", "--tp-size", "--disable-radix-cache",
                "--context-length", "--host", "--port", "--random-seed", "--dtype"}


def test_the_wheels_are_the_pinned_versions_and_are_downloaded_once():
    for package, version in (("vllm", VLLM_VERSION), ("sglang", SGLANG_VERSION)):
        path = wheel(package, version)
        assert path.name.startswith(f"{package}-{version}-") and zipfile.is_zipfile(path)
        assert wheel(package, version) == path


def test_vllm_serve_accepts_the_flags_tunekv_writes():
    options = vllm_serve_options()
    assert VLLM_FLAGS - options == set()
    assert len(options) > 100


def test_vllm_negates_only_boolean_options():
    options = vllm_serve_options()
    # Bool config fields get BooleanOptionalAction, which vLLM's parser turns into an enable/disable pair.
    assert {"--no-enforce-eager", "--no-trust-remote-code", "--disable-prefix-caching",
            "--disable-chunked-prefill", "--enable-uvicorn-access-log"} <= options
    # Valued options, and store_true ones, have no negation.
    assert not {"--no-block-size", "--no-port", "--no-max-model-len", "--no-headless",
                "--no-disable-log-stats", "--enable-log-stats"} & options
    assert {"-tp", "-q", "-h", "--help"} <= options


def test_sglang_accepts_the_flags_tunekv_writes():
    options = sglang_options()
    assert SGLANG_FLAGS - options == set()
    assert len(options) > 100


def test_sglang_negates_only_boolean_optional_options():
    options = sglang_options()
    assert "--no-disable-radix-cache" not in options  # a plain bool field is store_true
    assert "--enable-radix-cache" not in options  # SGLang's parser adds no enable/disable pairs
    assert {"--enable-tf32-matmul", "--no-enable-tf32-matmul"} <= options  # action=BooleanOptionalAction
    assert {"--tensor-parallel-size", "--model", "--enable-hicache"} <= options  # Arg(aliases=...)
    assert {"--config", "--sampling-backend", "--enable-dp-attention"} <= options  # added by hand


def test_made_up_flags_are_absent():
    for options in (vllm_serve_options(), sglang_options()):
        assert not {"--made-up-flag", "--no-made-up-flag", "--block-size-typo"} & options
    assert "--page-size" not in vllm_serve_options()
    assert "--block-size" not in sglang_options()
