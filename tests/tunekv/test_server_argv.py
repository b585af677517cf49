"""Every flag tunekv launches vLLM or SGLang with, and every key of the files it exports for them,
exists in that server's own argument parser (read from the pinned wheels, tests/tunekv/server_flags.py),
for any config the search can propose, with a value the server takes where it names its values (the
KV cache's dtype, the weights' quantization); and the launch and the export come from one table."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tunekv.helpers import BEST_POINT, BEST_SPEC, best
from tests.tunekv.server_flags import sglang_choices, sglang_options, vllm_serve_options, vllm_values
from tunekv.engine.config import KV_CACHE_DTYPES, QUANTIZATIONS
from tunekv.export import (
    SGLANG_KV_CACHE_DTYPES,
    SGLANG_QUANTIZATIONS,
    TGI_QUANTIZATIONS,
    VLLM_KV_CACHE_DTYPES,
    VLLM_QUANTIZATIONS,
    engine_config,
    to_sglang,
    to_vllm,
)
from tunekv.search.server_spec import ServerSpec
from tunekv.search.servers import VLLM_BLOCK_SIZES, server_command
from tunekv.search.space import BATCHED_TOKENS, BLOCK_SIZES, MAX_NUM_SEQS, MEMORY_UTILIZATIONS, make_valid

POINTS = st.builds(
    lambda block, seqs, budget, mem, tp, chunked, prefix, mml, kv: make_valid({
        **BEST_POINT, "block_size": block, "max_num_seqs": seqs, "max_num_batched_tokens": budget,
        "gpu_memory_utilization": mem, "tensor_parallel_size": tp, "enable_chunked_prefill": chunked,
        "enable_prefix_caching": prefix, "max_model_len": mml, "kv_cache_dtype": kv}),
    st.sampled_from(BLOCK_SIZES), st.sampled_from(MAX_NUM_SEQS), st.sampled_from(BATCHED_TOKENS),
    st.sampled_from(MEMORY_UTILIZATIONS), st.sampled_from((1, 2, 4, 8)), st.booleans(), st.booleans(),
    st.sampled_from((2048, 4096, 8192)), st.sampled_from(KV_CACHE_DTYPES))
QUANTIZATION = st.sampled_from((None, *QUANTIZATIONS))   # a search setting: in the study's base, not a knob
NAMED_VALUES = ("--kv-cache-dtype", "--quantization")    # the options whose values the servers list


def flags(argv: list[str]) -> set[str]:
    return {arg for arg in argv if arg.startswith("--")}


def body(text: str) -> dict:
    return yaml.safe_load("\n".join(line for line in text.splitlines() if not line.startswith("#")))


def base(quantization: str | None) -> dict:
    return {**BEST_SPEC["base"], **({"quantization": quantization} if quantization else {})}


def quantized_best(point: dict, quantization: str | None):
    b = best(point)
    b.spec = {**BEST_SPEC, "base": base(quantization)}
    return b


def value_of(argv: list[str], option: str) -> str | None:
    return argv[argv.index(option) + 1] if option in argv else None


def argv_of(kind: str, point: dict, quantization: str | None = None) -> list[str]:
    config = engine_config(base(quantization), point)
    command = server_command(ServerSpec(kind), config, "Qwen/Qwen3-0.6B", "bfloat16", 2100, 256, Path("unused.yaml"))
    return command.argv(8123)


@settings(max_examples=120, deadline=None)
@given(point=POINTS, quantization=QUANTIZATION)
def test_every_vllm_flag_and_config_key_is_one_vllm_serve_takes(point, quantization):
    options = vllm_serve_options()
    argv = argv_of("vllm", point, quantization)
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen3-0.6B"] and argv[-4:] == ["--host", "127.0.0.1", "--port", "8123"]
    assert flags(argv) <= options, flags(argv) - options
    exported = body(to_vllm(quantized_best(point, quantization)))
    # `vllm serve --config` turns `key: value` into --key value and `key: true` into --key; a false
    # is dropped (tunekv writes none)
    assert {f"--{key}" for key in exported if key != "model"} <= options
    assert all(value is not False for value in exported.values())
    # one table: the file and the launch set the same flags to the same values
    launched = {a.removeprefix("--"): b for a, b in zip(argv[3:-4], argv[4:-4] + [""], strict=True)
                if a.startswith("--")}
    for key, value in exported.items():
        if key == "model":
            continue
        assert key in launched, key
        assert value is True or launched[key] == str(value), (key, value, launched[key])
    assert exported["block-size"] in VLLM_BLOCK_SIZES
    for option in NAMED_VALUES:   # the values vLLM checks these against after parsing
        assert value_of(argv, option) in vllm_values(option) | {None}, (option, value_of(argv, option))
    assert value_of(argv, "--kv-cache-dtype") == {"auto": "auto", "fp8": "fp8"}[point["kv_cache_dtype"]]
    assert (value_of(argv, "--quantization") is None) == (quantization is None)


@settings(max_examples=120, deadline=None)
@given(point=POINTS, quantization=QUANTIZATION)
def test_every_sglang_flag_and_config_key_is_one_launch_server_takes(point, quantization):
    options = sglang_options()
    argv = argv_of("sglang", point, quantization)
    assert argv[1:3] == ["-m", "sglang.launch_server"] and "--model-path" in argv
    assert flags(argv) <= options, flags(argv) - options
    exported = body(to_sglang(quantized_best(point, quantization)))
    assert {f"--{key}" for key in exported} <= options
    on = {key for key, value in exported.items() if value is True}
    assert {f"--{key}" for key in on} <= flags(argv)
    assert not {key for key, value in exported.items() if value is False} & {a[2:] for a in flags(argv)}
    for option in NAMED_VALUES:   # argparse's choices for these options
        assert value_of(argv, option) in sglang_choices(option) | {None}, (option, value_of(argv, option))
        assert exported.get(option[2:]) == value_of(argv, option)
    assert value_of(argv, "--kv-cache-dtype") == {"auto": "auto", "fp8": "fp8_e4m3"}[point["kv_cache_dtype"]]
    assert (value_of(argv, "--quantization") is None) == (quantization is None)


def test_every_value_tunekv_writes_for_kv_cache_dtype_and_quantization_is_one_the_servers_take():
    vllm, sglang = vllm_values("--kv-cache-dtype"), sglang_choices("--kv-cache-dtype")
    assert set(VLLM_KV_CACHE_DTYPES.values()) <= vllm and set(SGLANG_KV_CACHE_DTYPES.values()) <= sglang
    assert set(VLLM_QUANTIZATIONS.values()) <= vllm_values("--quantization")
    assert set(SGLANG_QUANTIZATIONS.values()) <= sglang_choices("--quantization")
    assert set(VLLM_KV_CACHE_DTYPES) == set(SGLANG_KV_CACHE_DTYPES) == set(KV_CACHE_DTYPES)
    assert set(VLLM_QUANTIZATIONS) == set(SGLANG_QUANTIZATIONS) == set(TGI_QUANTIZATIONS) == set(QUANTIZATIONS)


def test_tgi_and_tunekv_launch_on_127_0_0_1_with_the_port_given(tmp_path):
    tgi = server_command(ServerSpec("tgi"), engine_config(BEST_SPEC["base"], BEST_POINT), "Qwen/Qwen3-0.6B",
                         "bfloat16", 2100, 256, tmp_path / "unused.yaml")
    argv = tgi.argv(8123)
    assert argv[0] == "text-generation-launcher" and argv[-4:] == ["--hostname", "127.0.0.1", "--port", "8123"]
    assert "--model-id" in argv and tgi.env == {"PREFIX_CACHING": "0"}
    config_file = tmp_path / "trial-3.yaml"
    own = server_command(ServerSpec("tunekv"), engine_config(BEST_SPEC["base"], BEST_POINT), "qwen3-0.6b",
                         "bfloat16", 2100, 256, config_file)
    argv = own.argv(8123)
    assert argv[1:4] == ["-m", "tunekv", "serve"] and argv[argv.index("--config") + 1] == str(config_file)
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8123"
    assert yaml.safe_load(config_file.read_text()) == engine_config(BEST_SPEC["base"], BEST_POINT)


def test_tgi_launches_with_the_quantization_and_an_fp8_cache_and_no_dtype(tmp_path):
    config = engine_config(base("gptq"), {**BEST_POINT, "kv_cache_dtype": "fp8"})
    argv = server_command(ServerSpec("tgi"), config, "Qwen/Qwen3-0.6B", "bfloat16", 2100, 256,
                          tmp_path / "unused.yaml").argv(8123)
    assert value_of(argv, "--quantize") == "gptq" and value_of(argv, "--kv-cache-dtype") == "fp8_e4m3fn"
    assert "--dtype" not in argv, "TGI's launcher refuses --dtype with --quantize"
    plain = server_command(ServerSpec("tgi"), engine_config(base(None), BEST_POINT), "Qwen/Qwen3-0.6B", "bfloat16",
                           2100, 256, tmp_path / "unused.yaml").argv(8123)
    assert value_of(plain, "--dtype") == "bfloat16" and not {"--quantize", "--kv-cache-dtype"} & set(plain)
