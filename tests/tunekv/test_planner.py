"""`tunekv plan`: the local plan counts the engine's own blocks; preset plans, their verdicts,
and the command line."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tunekv.run_cli import refused, tunekv
from tunekv.engine import EngineConfig, LLMEngine
from tunekv.engine.model_config import load_model_config, model_preset_names
from tunekv.engine.models.llama import LlamaForCausalLM
from tunekv.errors import BadInput
from tunekv.hardware.gpus import gpu_preset, gpu_presets, match_gpu
from tunekv.predict.planner import plan_for_gpu, plan_local

PLAN_KEYS = {"model", "gpu", "tp", "dtype", "weights_bytes", "kv_bytes_per_token", "activation_bytes",
             "free_for_kv_bytes", "num_kv_blocks", "block_size", "max_model_len", "max_concurrent_seqs", "fits", "why"}


@pytest.mark.parametrize("budget,block_size,dtype", [(3_000_000, 16, "float32"), (1 << 20, 8, "float16"),
                                                      (777_777, 32, "bfloat16")])
def test_local_plan_counts_the_engines_blocks_to_the_block(budget, block_size, dtype):
    config = EngineConfig(model="tiny-llama", device="cpu", dtype=dtype, block_size=block_size,
                          kv_cache_memory_bytes=budget, max_model_len=256)
    plan = plan_local(config, "chat", 300.0)
    engine = LLMEngine(config)
    assert plan.num_kv_blocks == engine.num_kv_blocks
    assert plan.kv_bytes_per_token == engine.runner.kv_bytes_per_token
    assert plan.weights_bytes == sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
    assert not plan.estimate and plan.fits


@pytest.mark.parametrize("name", model_preset_names())
def test_parameter_count_from_the_config_equals_the_module(name):
    mc = load_model_config(name)
    with torch.device("meta"):
        model = LlamaForCausalLM(mc.hf_config, mc.num_heads, mc.num_kv_heads, mc.head_dim, 64)
    assert mc.num_params == sum(p.numel() for p in model.parameters())


def test_preset_plan_breakdown_adds_up_and_paging_holds_more_than_contiguous():
    spec = gpu_preset("h100-80gb")
    plan = plan_for_gpu(EngineConfig(model="llama-3-8b", max_model_len=8192), spec, "chat", 600.0)
    assert plan.estimate and plan.fits and plan.dtype == "bfloat16"
    assert plan.weights_bytes == load_model_config("llama-3-8b").num_params * 2
    assert plan.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    spent = plan.weights_bytes + plan.activation_bytes + plan.cuda_graph_bytes + plan.other_bytes
    assert plan.free_for_kv_bytes == int(spec.memory_bytes * 0.9 - spent)
    assert plan.num_kv_blocks == plan.free_for_kv_bytes // (plan.kv_bytes_per_token * 16)
    paged, contiguous = plan.max_concurrent_seqs, plan.max_concurrent_seqs_contiguous
    assert paged.at_max_model_len == contiguous.at_max_model_len == plan.num_kv_blocks // 512
    assert contiguous.at_workload_mean is not None
    assert paged.at_workload_mean == plan.num_kv_blocks // 38 > contiguous.at_workload_mean
    smaller = plan_for_gpu(EngineConfig(model="llama-3-8b", max_model_len=8192, gpu_memory_utilization=0.5), spec)
    assert smaller.num_kv_blocks < plan.num_kv_blocks


def test_a_model_too_big_for_one_gpu_says_which_tp_it_needs():
    plan = plan_for_gpu(EngineConfig(model="llama-3-70b", max_model_len=8192), gpu_preset("h100-80gb"))
    assert not plan.fits and plan.min_tp == 2
    assert plan.why.startswith("weights 131.4 GiB > 79.6 GiB x 0.90") and plan.why.endswith("needs tp >= 2")
    tp2 = plan_for_gpu(EngineConfig(model="llama-3-70b", max_model_len=8192, tensor_parallel_size=2),
                       gpu_preset("h100-80gb"))
    assert tp2.fits and tp2.weights_bytes == plan.weights_bytes // 2
    assert tp2.kv_bytes_per_token == plan.kv_bytes_per_token // 2


def test_a_pool_smaller_than_one_sequence_does_not_fit():
    plan = plan_for_gpu(EngineConfig(model="llama-3-8b", max_model_len=8192, gpu_memory_utilization=0.78),
                        gpu_preset("l4-24gb"))
    assert not plan.fits and "fewer than one max_model_len sequence" in plan.why


def test_gpu_names_match_their_presets():
    assert match_gpu("NVIDIA A100-SXM4-80GB").key == "a100-80gb"
    assert match_gpu("NVIDIA A10G").key == "a10g-24gb"
    assert match_gpu("NVIDIA L40S").key == "l40s-48gb" and match_gpu("NVIDIA L4").key == "l4-24gb"
    assert match_gpu("NVIDIA H200").key == "h200-141gb" and match_gpu("Tesla T4") is None
    for spec in gpu_presets().values():
        assert spec.memory_bytes > 20 * 2**30 and spec.bandwidth_bytes_s > 1e11 and spec.sources


def test_plan_command_json_and_tables():
    done = tunekv("plan", "--model", "llama-3-8b", "--gpu", "h100-80gb", "--max-model-len", "8192", "--workload",
                  "chat", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert PLAN_KEYS <= plan.keys() and plan["fits"] and plan["estimate"]
    assert set(plan["max_concurrent_seqs"]) == {"at_max_model_len", "at_workload_mean"}
    table = tunekv("plan", "--model", "llama-3-70b", "--gpu", "h100-80gb")
    assert table.returncode == 0 and "needs tp >= 2" in table.stdout and "does not fit" in table.stdout


@pytest.mark.parametrize("args,message", [
    (["--gpu", "h100"], "unknown GPU preset 'h100' (did you mean 'h100-80gb'?); valid presets: a100-40gb"),
    (["--model", "llama-3-70b", "--gpu", "l4-24gb", "--gpu-memory-utilization", "0.5"],
     "does not fit on l4-24gb even at tp=8: weights 16.4 GiB > 22.5 GiB x 0.50"),
    (["--tp", "3", "--gpu", "h100-80gb"], "--tp must be 1, 2, 4 or 8"),
    (["--model", "nope"], "unknown model 'nope'"),
])
def test_plan_bad_input_is_one_sentence_and_exit_2(args, message):
    done = tunekv("plan", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path")
def test_plan_on_a_machine_without_gpu():
    local = tunekv("plan", "--gpu", "local")
    assert local.returncode == 2 and "needs a GPU" in local.stderr and "h100-80gb" in local.stderr
    default = tunekv("plan", "--model", "qwen3-0.6b")
    assert default.returncode == 0 and "planning for the h100-80gb preset" in default.stdout


def test_fp8_kv_doubles_the_kv_tokens_of_the_same_pool():
    spec = gpu_preset("h100-80gb")
    for model, block_size in (("llama-3-8b", 16), ("qwen3-0.6b", 32), ("llama-3-70b", 128)):
        tp = 1 if model != "llama-3-70b" else 2
        auto = plan_for_gpu(EngineConfig(model=model, max_model_len=4096, block_size=block_size,
                                         tensor_parallel_size=tp), spec)
        fp8 = plan_for_gpu(EngineConfig(model=model, max_model_len=4096, block_size=block_size,
                                        tensor_parallel_size=tp, kv_cache_dtype="fp8"), spec)
        assert (auto.kv_cache_dtype, fp8.kv_cache_dtype) == ("bfloat16", "float8_e4m3fn")
        assert fp8.free_for_kv_bytes == auto.free_for_kv_bytes           # the same pool ...
        assert 2 * fp8.kv_bytes_per_token == auto.kv_bytes_per_token     # ... at one byte an element
        pool_tokens = fp8.free_for_kv_bytes // fp8.kv_bytes_per_token   # before rounding to whole blocks
        assert pool_tokens == 2 * (auto.free_for_kv_bytes // auto.kv_bytes_per_token) + (
            auto.free_for_kv_bytes % auto.kv_bytes_per_token >= fp8.kv_bytes_per_token)
        # whole blocks: exactly twice, or one more where the bf16 pool's last half block fills one
        assert fp8.num_kv_blocks == fp8.free_for_kv_bytes // (fp8.kv_bytes_per_token * block_size)
        assert fp8.num_kv_blocks - 2 * auto.num_kv_blocks in (0, 1)
        assert fp8.num_kv_blocks * block_size == 2 * auto.num_kv_blocks * block_size + block_size * (
            auto.free_for_kv_bytes % (auto.kv_bytes_per_token * block_size) >= fp8.kv_bytes_per_token * block_size)
    exact = plan_for_gpu(EngineConfig(model="llama-3-8b", max_model_len=8192, kv_cache_dtype="fp8"), spec)
    assert exact.num_kv_blocks * 16 == 2 * plan_for_gpu(EngineConfig(model="llama-3-8b", max_model_len=8192),
                                                        spec).num_kv_blocks * 16 == 898_752


def test_an_int4_70b_fits_on_one_h100_where_bf16_needs_tp_2():
    spec = gpu_preset("h100-80gb")
    bf16 = plan_for_gpu(EngineConfig(model="llama-3-70b", max_model_len=8192), spec)
    assert not bf16.fits and bf16.min_tp == 2
    for method in ("awq", "gptq"):
        int4 = plan_for_gpu(EngineConfig(model="llama-3-70b", max_model_len=8192, quantization=method), spec)
        assert int4.fits and int4.min_tp == 1 and int4.quantization == method and int4.tp == 1
        assert int4.bits_per_weight == 4 + 16 / 128 + 4 / 128
        assert int4.weights_bytes < 40 * 2**30 < 0.9 * spec.memory_bytes


@pytest.mark.parametrize("method,bits", [("fp8", 8), ("int8", 8), ("awq", 4.15625), ("gptq", 4.15625)])
def test_quantization_shrinks_the_matmul_weights_by_its_bits_and_leaves_the_rest(method, bits):
    mc = load_model_config("llama-3-8b")
    spec = gpu_preset("h100-80gb")
    bf16 = plan_for_gpu(EngineConfig(model="llama-3-8b", max_model_len=8192), spec)
    plan = plan_for_gpu(EngineConfig(model="llama-3-8b", max_model_len=8192, quantization=method), spec)
    matmul = mc.num_layers * mc.linear_params_per_layer
    assert bf16.matmul_weights_bytes == matmul * 2 and bf16.bits_per_weight == 16 and bf16.quantization is None
    assert plan.matmul_weights_bytes == matmul * bits / 8 == bf16.matmul_weights_bytes * bits / 16
    # the embeddings, the LM head and the norms stay bf16, as vLLM loads AWQ and GPTQ checkpoints
    assert plan.weights_bytes - plan.matmul_weights_bytes == bf16.weights_bytes - bf16.matmul_weights_bytes \
        == (mc.num_params - matmul) * 2
    assert plan.free_for_kv_bytes - bf16.free_for_kv_bytes == bf16.weights_bytes - plan.weights_bytes
    tp2 = plan_for_gpu(EngineConfig(model="llama-3-8b", max_model_len=8192, quantization=method,
                                    tensor_parallel_size=2), spec)
    assert tp2.weights_bytes == plan.weights_bytes // 2


def test_plan_command_sizes_quantized_weights_and_an_fp8_cache():
    done = tunekv("plan", "--model", "llama-3-70b", "--gpu", "h100-80gb", "--max-model-len", "8192",
                  "--quantization", "awq", "--kv-cache-dtype", "fp8", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["fits"] and plan["tp"] == 1 and plan["quantization"] == "awq" and plan["bits_per_weight"] == 4.15625
    assert plan["kv_cache_dtype"] == "float8_e4m3fn" and plan["kv_bytes_per_token"] == 2 * 80 * 8 * 128
    table = tunekv("plan", "--model", "llama-3-70b", "--gpu", "h100-80gb", "--max-model-len", "8192",
                   "--quantization", "gptq", "--kv-cache-dtype", "fp8")
    assert table.returncode == 0, table.stderr
    assert "weights (gptq)" in table.stdout and "float8_e4m3fn" in table.stdout
    assert "4.15625 bits a matmul weight" in table.stdout and "runs unquantized weights" in table.stdout


@pytest.mark.parametrize("args,message", [
    (["--quantization", "int4"], "argument --quantization: invalid choice: 'int4' (choose from "),
    (["--kv-cache-dtype", "fp8_e5m2"], "argument --kv-cache-dtype: invalid choice: 'fp8_e5m2' (choose from "),
])
def test_plan_bad_quantization_or_kv_dtype_is_one_sentence_and_exit_2(args, message, tmp_path):
    done = refused("plan", "--gpu", "h100-80gb", *args, cwd=tmp_path, message=message)
    assert ("awq" in done.stderr) == ("int4" in args) and "fp8" in done.stderr


def test_a_measured_plan_refuses_quantized_weights():
    config = EngineConfig(model="tiny-llama", device="cpu", kv_cache_memory_bytes=1 << 20, quantization="awq")
    with pytest.raises(BadInput, match="plan awq weights against a GPU preset"):
        plan_local(config)
