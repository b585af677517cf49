"""The step-cost fit recovers known parameters, drops outliers, and is kept per device; preset
GPUs borrow the closest calibrated GPU's efficiencies."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tunekv.engine import EngineConfig
from tunekv.engine.model_config import load_model_config
from tunekv.engine.step_cost import ModelCosts, StepCostModel, StepCostParams, StepFeatures
from tunekv.hardware.gpus import gpu_preset
from tunekv.predict.costmodel import (
    POOR_FIT_ERROR,
    SAMPLE_FORMAT,
    FitQuality,
    Variant,
    calibration_for_gpu,
    fit_params,
    load_calibration,
    predict,
    record_samples,
    step_costs,
    work_matrix,
)

COSTS = ModelCosts.from_model(load_model_config("qwen3-0.6b"), 2)
TRUE = StepCostParams(overhead_s=1.5e-3, mixed_overhead_s=4e-3, per_seq_s=8e-6, per_prefill_s=2e-5,
                      s_per_linear_flop=1 / 500e12, s_per_attn_flop=1 / 150e12, s_per_byte=1 / 3.2e12)


def steps(n: int, seed: int = 0) -> list[StepFeatures]:
    """Decode batches over short and long contexts, prefill chunks, and mixed steps."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seqs = rng.choice([1, 2, 4, 8, 16, 32, 64, 128, 256])
        ctx = rng.choice([64, 512, 2048, 8192])
        if rng.random() < 0.7:
            out.append(StepFeatures(seqs, seqs, seqs, seqs * ctx, float(seqs * ctx), 0))
        else:
            prefills = rng.randint(1, 4)
            chunk = rng.choice([128, 512, 2048])
            tokens = seqs + prefills * chunk
            pairs = seqs * ctx + prefills * chunk * (chunk + 1) / 2
            out.append(StepFeatures(seqs + prefills, tokens, seqs + prefills, seqs * ctx + prefills * chunk, pairs,
                                    prefills))
    return out


def test_fit_recovers_the_parameters_of_noise_free_steps():
    features = steps(400)
    model = StepCostModel(COSTS, TRUE)
    seconds = [model.predict(f) for f in features]
    params, quality = fit_params([f.as_list() for f in features], seconds, COSTS)
    assert quality.median_rel_err < 1e-6 and quality.dropped_outliers == 0
    for name in ("overhead_s", "mixed_overhead_s", "s_per_linear_flop", "s_per_attn_flop", "s_per_byte"):
        assert getattr(params, name) == pytest.approx(getattr(TRUE, name), rel=1e-3), name


def test_fit_with_noise_and_stalls_predicts_within_a_few_percent():
    features = steps(600, seed=1)
    model = StepCostModel(COSTS, TRUE)
    rng = np.random.default_rng(0)
    seconds = [model.predict(f) * float(rng.lognormal(0, 0.05)) for f in features]
    for i in range(0, 600, 60):  # ten first-call compilations
        seconds[i] += 2.0
    params, quality = fit_params([f.as_list() for f in features], seconds, COSTS)
    assert quality.dropped_outliers == 10 and quality.median_rel_err < 0.05
    held_out = steps(200, seed=2)
    truth = np.array([model.predict(f) for f in held_out])
    pred = predict(params, work_matrix([f.as_list() for f in held_out], COSTS))
    assert np.median(np.abs(pred - truth) / truth) < 0.03


QWEN = Variant("qwen3-0.6b", "bfloat16", "triton", eager=False)
H100 = gpu_preset("h100-80gb")


def record(variant: Variant, features: list[StepFeatures], gpu=H100, key: str = "nvidia-h100"):
    model = StepCostModel(COSTS, TRUE)
    samples = [(f, model.predict(f)) for f in features]
    return record_samples(key, gpu.name if gpu else "CPU", gpu, variant, COSTS, samples)


def test_samples_accumulate_per_device_and_variant_and_refit(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    features = steps(100)
    first = record(QWEN, features[:50])
    second = record(QWEN, features[50:])
    assert first.quality.samples == 50 and second.quality.samples == 100
    loaded = load_calibration("nvidia-h100", QWEN)
    assert loaded is not None and loaded.params == second.params
    assert load_calibration("nvidia-h100", Variant("qwen3-0.6b", "float16", "triton", False)) is None
    assert load_calibration("nvidia-h100", Variant("qwen3-0.6b", "bfloat16", "triton", True)) is None  # eager
    assert load_calibration("nvidia-a100", QWEN) is None
    path = tmp_path / "calibration" / "nvidia-h100.json"
    assert f'"format": {SAMPLE_FORMAT}' in path.read_text()
    assert not list(path.parent.glob("*.tmp"))


def test_the_variant_follows_how_the_engine_runs(tmp_path):
    graphs = EngineConfig(model="qwen3-0.6b")
    assert Variant.of(graphs, "cuda", "bfloat16") == QWEN
    assert Variant.of(EngineConfig(model="qwen3-0.6b", enforce_eager=True), "cuda", "bfloat16").eager
    assert Variant.of(graphs, "cpu", "float32") == Variant("qwen3-0.6b", "float32", "torch", eager=True)


def test_too_few_steps_or_a_damaged_file_never_leave_a_bad_fit(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="too few to fit"):
        record(QWEN, steps(5))
    assert load_calibration("nvidia-h100", QWEN) is None
    record(QWEN, steps(40))
    path = tmp_path / "calibration" / "nvidia-h100.json"
    data = json.loads(path.read_text())
    data["models"][QWEN.key]["params"] = {"overhead_s": "fast"}
    path.write_text(json.dumps(data))
    assert load_calibration("nvidia-h100", QWEN) is None  # damaged: treated as absent
    path.write_text("{not json")
    assert record(QWEN, steps(40)).quality.samples == 40  # starts over


def test_outliers_dropped_are_capped_at_a_tenth():
    features = steps(100, seed=3)
    model = StepCostModel(COSTS, TRUE)
    seconds = [model.predict(f) + (5.0 if i % 3 == 0 else 0.0) for i, f in enumerate(features)]  # a third stalled
    _, quality = fit_params([f.as_list() for f in features], seconds, COSTS)
    assert quality.dropped_outliers <= 10


def test_a_preset_without_calibration_uses_labelled_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    cal = calibration_for_gpu(gpu_preset("h200-141gb"), QWEN)
    assert cal.source == "defaults" and "no GPU calibrated here yet" in cal.note


def test_a_preset_borrows_the_closest_calibrated_gpus_efficiencies(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    record(QWEN, steps(200))
    record(Variant("tiny-llama", "float32", "torch", True), steps(50), gpu=None, key="cpu-x86-64-1t")
    own = calibration_for_gpu(H100, QWEN)
    assert own.source == "calibrated" and own.params == load_calibration("nvidia-h100", QWEN).params
    h200 = gpu_preset("h200-141gb")
    moved = calibration_for_gpu(h200, Variant("llama-3-8b", "bfloat16", "triton", False))
    assert moved.source == "transferred" and "H100" in moved.device
    # Same efficiency on the H200's bandwidth: a byte costs less by the bandwidth ratio.
    assert moved.params.s_per_byte == pytest.approx(TRUE.s_per_byte * H100.bandwidth_bytes_s / h200.bandwidth_bytes_s,
                                                    rel=1e-3)
    assert moved.params.overhead_s == pytest.approx(TRUE.overhead_s, rel=1e-3)


def test_an_fp8_cache_and_quantized_weights_shrink_the_bytes_a_step_reads():
    import torch

    mc = load_model_config("llama-3-8b")
    bf16 = step_costs(mc, torch.bfloat16)
    fp8 = step_costs(mc, torch.bfloat16, "fp8")
    awq = step_costs(mc, torch.bfloat16, quantization="awq")
    assert bf16 == ModelCosts.from_model(mc, 2)           # nothing asked: the engine's own costs
    assert 2 * fp8.kv_bytes_per_token == bf16.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert fp8.weight_bytes == bf16.weight_bytes
    lm_head = mc.hf_config.hidden_size * mc.hf_config.vocab_size * 2
    assert awq.weight_bytes - lm_head == (bf16.weight_bytes - lm_head) * (4 + 20 / 128) / 16
    assert awq.kv_bytes_per_token == bf16.kv_bytes_per_token
    assert awq.linear_flops_per_token == bf16.linear_flops_per_token      # dequantized to bf16 matmuls
    decode = StepFeatures(64, 64, 64, 64 * 4096, 64.0 * 4096, 0)          # 64 sequences at 4k: memory bound
    (_, _, weights, kv), (_, _, weights8, kv8) = bf16.work(decode), fp8.work(decode)
    assert kv8 == kv / 2 and weights8 == weights
    params = calibration_for_gpu(H100, QWEN).params
    times = {name: StepCostModel(costs, params).predict(decode) for name, costs in
             (("bf16", bf16), ("fp8", fp8), ("awq", awq))}
    assert times["fp8"] < times["bf16"] and times["awq"] < times["bf16"]
    # the attention term is all KV bytes here: fp8 saves exactly half of its time
    assert times["bf16"] - times["fp8"] == pytest.approx(kv / 2 * params.s_per_byte, rel=1e-9)


def test_an_fp8_cache_is_a_variant_of_its_own_and_borrows_the_bf16_fit_labelled(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    fp8 = Variant.of(EngineConfig(model="qwen3-0.6b", kv_cache_dtype="fp8"), "cuda", "bfloat16")
    assert fp8 == Variant("qwen3-0.6b", "bfloat16", "triton", False, "fp8") and fp8.key == f"{QWEN.key}:kv-fp8"
    assert Variant.of(EngineConfig(model="qwen3-0.6b"), "cuda", "bfloat16").key == "qwen3-0.6b:bfloat16:triton"
    record(QWEN, steps(100))
    assert load_calibration("nvidia-h100", fp8) is None     # steps of a bf16 cache never fit an fp8 one
    borrowed = calibration_for_gpu(H100, fp8)
    assert borrowed.source == "transferred" and f"for {QWEN.key}" in borrowed.note
    assert calibration_for_gpu(H100, QWEN).source == "calibrated"


def test_a_quantized_simulation_charges_fewer_weight_bytes_on_a_preset(tmp_path, monkeypatch):
    from tunekv.predict.simulate import simulated_engine

    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path))
    plain = simulated_engine(EngineConfig(model="llama-3-8b", max_model_len=8192), "h100-80gb")
    awq = simulated_engine(EngineConfig(model="llama-3-8b", max_model_len=8192, quantization="awq",
                                        kv_cache_dtype="fp8"), "h100-80gb")
    plain_costs, awq_costs = plain.runner.cost_model.costs, awq.runner.cost_model.costs
    assert awq_costs.weight_bytes < plain_costs.weight_bytes / 2
    assert 2 * awq_costs.kv_bytes_per_token == plain_costs.kv_bytes_per_token
    assert awq.num_kv_blocks > 2 * plain.num_kv_blocks       # fewer weight bytes and half the KV bytes a token
    device = awq.runner.device_description()
    assert device["kv_cache_dtype"] == "fp8" and device["weights"].startswith("awq, 4.15625 bits a matmul weight")


def test_a_poor_fit_says_why_and_what_fits_better():
    assert FitQuality(156, POOR_FIT_ERROR, 1.0, 0).warning == ""
    warning = FitQuality(156, 0.87, 5.81, 0).warning
    assert warning.startswith("a poor fit: the machine was busy") and "`tunekv calibrate`" in warning
