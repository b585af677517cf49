"""Exports of a best trial: each file's keys are the target engine's own, its values pass that
engine's checks, and the tunekv YAML loads back."""

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tunekv.helpers import BEST_POINT, BEST_SPEC, best
from tunekv.engine import EngineConfig
from tunekv.export import FORMATS, model_source, to_sglang, to_tgi, to_tunekv, to_vllm
from tunekv.search.space import BATCHED_TOKENS, BLOCK_SIZES, MAX_NUM_SEQS, make_valid

# vLLM's EngineArgs fields (vllm/engine/arg_utils.py) that a tunekv export may set.
VLLM_ENGINE_ARGS = {"model", "dtype", "block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
                    "gpu_memory_utilization", "tensor_parallel_size", "enable_prefix_caching",
                    "enable_chunked_prefill", "kv_cache_dtype", "quantization", "seed"}
SGLANG_SERVER_ARGS = {"model_path", "dtype", "page_size", "context_length", "max_running_requests",
                      "chunked_prefill_size", "max_prefill_tokens", "tp_size", "mem_fraction_static",
                      "disable_radix_cache", "kv_cache_dtype", "quantization", "random_seed"}
TGI_ENV = {"MODEL_ID", "DTYPE", "MAX_INPUT_TOKENS", "MAX_TOTAL_TOKENS", "MAX_BATCH_PREFILL_TOKENS",
           "MAX_BATCH_TOTAL_TOKENS", "MAX_CONCURRENT_REQUESTS", "MAX_BATCH_SIZE", "NUM_SHARD",
           "CUDA_MEMORY_FRACTION", "PREFIX_CACHING"}


def body(text):
    return yaml.safe_load("\n".join(line for line in text.splitlines() if not line.startswith("#")))


def test_the_cli_offers_every_format():
    from tunekv.cli.main import build_parser

    for fmt in FORMATS:
        assert build_parser().parse_args(["export", "--study", "s", "--format", fmt]).format == fmt


def test_every_export_starts_with_what_it_was_tuned_for():
    for export in (to_tunekv, to_vllm, to_sglang, to_tgi):
        head = "\n".join(line for line in export(best()).splitlines() if line.startswith("#"))
        for needle in ("tunekv 0.1.0", "NVIDIA H100", "qwen3-0.6b", "chat", "ttft_p99<=500ms",
                       "2500.0 output tok/s at 96 users", "p99 TTFT 321 ms",
                       "measured on tunekv's engine on this device"):
            assert needle in head, (export.__name__, needle)
    assert "predicted by the simulator (a model of tunekv's engine), not measured" in to_vllm(best(fidelity="sim"))


def measured_on(server, version):
    b = best()
    b.spec = {**BEST_SPEC, "server": {"kind": server, "command": None, "health": "/health", "endpoint": None}}
    b.outcome = {**b.outcome, "server": f"{server} {version}"}
    return b


def test_each_file_names_the_server_measured_and_never_claims_another():
    # tunekv's engine: its own file carries the figures as its own, the other servers' say they were not measured
    assert "were not measured" not in to_tunekv(best())
    assert "these vLLM settings carry the knobs measured on tunekv's engine; they were not measured on vLLM" \
        in to_vllm(best())
    on_vllm = measured_on("vllm", "0.34.0")
    assert "measured on vllm 0.34.0 on this device: 2500.0 output tok/s" in to_vllm(on_vllm)
    assert "were not measured" not in to_vllm(on_vllm)
    for export, title in ((to_sglang, "SGLang"), (to_tgi, "TGI"), (to_tunekv, "tunekv")):
        text = export(on_vllm)
        assert f"measured on vllm 0.34.0; they were not measured on {title}" in text, export.__name__
    assert yaml.safe_load(to_tunekv(on_vllm))["tuned_for"]["measured_on"] == "vllm 0.34.0"
    # a prediction claims no server at all
    sim = best(fidelity="sim")
    assert "were not measured on" not in to_vllm(sim) and yaml.safe_load(to_tunekv(sim))["tuned_for"]["measured_on"] \
        is None


def test_tunekv_yaml_loads_back_as_an_engine_config():
    data = yaml.safe_load(to_tunekv(best()))
    assert data["tuned_for"]["gpu"] == "NVIDIA H100 80GB HBM3"
    config = EngineConfig.from_dict(data)
    assert config.block_size == 32 and config.enable_prefix_caching is False and config.model == "qwen3-0.6b"


def test_vllm_keys_are_engine_args_and_off_switches_are_written_as_no_flags():
    text = to_vllm(best())
    args = body(text)
    assert {k.removeprefix("no-").replace("-", "_") for k in args} <= VLLM_ENGINE_ARGS
    # `vllm serve --config` drops a `key: false` (its top-level parser has no --no-key); a true
    # `no-key` becomes --no-key, which the serve parser takes
    assert args["no-enable-prefix-caching"] is True and "enable-prefix-caching" not in args
    assert all(v is not False for v in args.values()) and args["model"] == "Qwen/Qwen3-0.6B"


def test_sglang_disables_chunking_with_minus_one():
    on = body(to_sglang(best()))
    off = body(to_sglang(best({**BEST_POINT, "enable_chunked_prefill": False, "max_num_batched_tokens": 4096})))
    assert {k.replace("-", "_") for k in on} <= SGLANG_SERVER_ARGS
    assert on["chunked-prefill-size"] == 2048 and off["chunked-prefill-size"] == -1
    assert on["disable-radix-cache"] is True and on["page-size"] == 32


def tgi_env(text):
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@settings(max_examples=150, deadline=None)
@given(block=st.sampled_from(BLOCK_SIZES), seqs=st.sampled_from(MAX_NUM_SEQS), budget=st.sampled_from(BATCHED_TOKENS),
       chunked=st.booleans(), mml=st.sampled_from((2200, 4096, 8192)), blocks=st.integers(1, 100000),
       prompt=st.integers(1, 9000), users=st.integers(0, 3000))
def test_exports_obey_vllm_and_tgi_rules_for_any_valid_point(block, seqs, budget, chunked, mml, blocks, prompt, users):
    point = make_valid({**BEST_POINT, "block_size": block, "max_num_seqs": seqs, "max_num_batched_tokens": budget,
                        "enable_chunked_prefill": chunked, "max_model_len": mml})
    b = best(point, blocks=blocks)   # a paged pool may be smaller than max_model_len
    b.spec = {**BEST_SPEC, "max_prompt_tokens": prompt}
    b.outcome = {**b.outcome, "capacity": users}
    v = body(to_vllm(b))
    # vllm/config/scheduler.py verify_max_model_len, and the CUDA backends' block sizes
    assert v["max-num-batched-tokens"] >= v["max-num-seqs"]
    assert chunked or v["max-num-batched-tokens"] >= v["max-model-len"]
    assert v["block-size"] % 16 == 0
    env = {k: int(val) for k, val in tgi_env(to_tgi(b)).items() if val.isdigit()}
    assert set(tgi_env(to_tgi(b))) == TGI_ENV
    # TGI's launcher and router: input < total <= batch total; input <= prefill <= batch total
    assert env["MAX_INPUT_TOKENS"] < env["MAX_TOTAL_TOKENS"] <= env["MAX_BATCH_TOTAL_TOKENS"]
    assert env["MAX_INPUT_TOKENS"] <= env["MAX_BATCH_PREFILL_TOKENS"] <= env["MAX_BATCH_TOTAL_TOKENS"]
    assert env["MAX_CONCURRENT_REQUESTS"] >= max(users, seqs), "TGI would refuse users the search measured"


def test_tgi_gets_no_dtype_it_cannot_take():
    b = best()
    b.spec = {**BEST_SPEC, "dtype": "float32"}
    text = to_tgi(b)
    assert "DTYPE" not in tgi_env(text) and "which TGI's --dtype does not take" in text
    assert tgi_env(to_tgi(best()))["DTYPE"] == "bfloat16"


def test_tgi_file_carries_the_launcher_command():
    text = to_tgi(best())
    assert "text-generation-launcher --model-id Qwen/Qwen3-0.6B" in text and "--max-batch-total-tokens 160000" in text
    assert "the pool tunekv measured (160000 tokens)" in text
    assert "the pool tunekv predicted for this GPU (160000 tokens)" in to_tgi(best(fidelity="sim"))


def test_block_size_8_becomes_16_for_vllm_with_a_note():
    text = to_vllm(best({**BEST_POINT, "block_size": 8}))
    assert body(text)["block-size"] == 16 and "multiple of 16" in text


def test_model_source_is_the_presets_hf_repository():
    assert model_source("llama-3-8b", None) == "meta-llama/Meta-Llama-3-8B"
    assert model_source("x", "/models/x") == "/models/x"


def quantized(method: str | None, kv_cache_dtype: str = "fp8"):
    b = best({**BEST_POINT, "kv_cache_dtype": kv_cache_dtype})
    b.spec = {**BEST_SPEC, "base": {**BEST_SPEC["base"], **({"quantization": method} if method else {})}}
    return b


def test_exports_carry_the_kv_cache_dtype_and_the_quantization_in_each_servers_spelling():
    plain = best()
    assert body(to_vllm(plain))["kv-cache-dtype"] == "auto" and "quantization" not in body(to_vllm(plain))
    assert body(to_sglang(plain))["kv-cache-dtype"] == "auto" and "quantization" not in body(to_sglang(plain))
    assert not {"KV_CACHE_DTYPE", "QUANTIZE"} & set(tgi_env(to_tgi(plain)))
    spelled = {"fp8": ("fp8", "fp8", "fp8"), "int8": ("compressed-tensors", "w8a8_int8", "eetq"),
               "awq": ("awq", "awq", "awq"), "gptq": ("gptq", "gptq", "gptq")}
    for method, (vllm, sglang, tgi) in spelled.items():
        b = quantized(method)
        v, s, t = body(to_vllm(b)), body(to_sglang(b)), tgi_env(to_tgi(b))
        assert (v["kv-cache-dtype"], v["quantization"]) == ("fp8", vllm)
        assert (s["kv-cache-dtype"], s["quantization"]) == ("fp8_e4m3", sglang)
        assert (t["KV_CACHE_DTYPE"], t["QUANTIZE"]) == ("fp8_e4m3fn", tgi)
        assert "DTYPE" not in t, "TGI's launcher refuses --dtype with --quantize"
        assert f"--quantize {tgi}" in to_tgi(b) and "--kv-cache-dtype fp8_e4m3fn" in to_tgi(b)
        tunekv = to_tunekv(b)
        assert yaml.safe_load(tunekv)["quantization"] == method and "tunekv's engine runs unquantized weights" in tunekv


def test_a_prequantized_format_says_the_server_needs_such_a_checkpoint():
    awq = quantized("awq")
    assert "vLLM loads it from a checkpoint quantized that way; point the model at one" in to_vllm(awq)
    assert "SGLang loads it from a checkpoint quantized that way" in to_sglang(awq)
    fp8 = quantized("fp8", "auto")
    assert "vLLM quantizes the 16-bit checkpoint as it loads it" in to_vllm(fp8)
    assert "TGI quantizes the 16-bit checkpoint as it loads it" in to_tgi(quantized("int8"))
    assert "which TGI's --dtype does not take" not in to_tgi(fp8)
