"""`tunekv calibrate`: time the real engine's steps on this device and fit the step-cost model.

The probes span the shapes a serving run produces: decode batches from 1 sequence to
``max_num_seqs`` over short and long contexts (each starts with its prefill chunks), then runs
of the chosen workloads, offline and with a few users, for mixed steps. Probes go from cheap to
expensive and stop at the time budget."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from tunekv.engine import EngineConfig, LLMEngine, SamplingParams
from tunekv.engine.model_runner import ModelRunner
from tunekv.engine.models.llama import LlamaForCausalLM
from tunekv.engine.step_cost import StepFeatures
from tunekv.errors import BadInput
from tunekv.predict.costmodel import Calibration, Variant, local_device, record_samples, step_costs
from tunekv.workload.loadgen import Load, run_load, warm_up
from tunekv.workload.workloads import Workload


@dataclass
class CalibrationRun:
    calibration: Calibration
    samples: int
    probes: int
    seconds: float
    device: str


def step_recorder(engine: LLMEngine) -> list[tuple[StepFeatures, float]]:
    """Attach to a real ``engine``; the returned list fills with (features, seconds) of every step
    (it stays empty on a simulated engine, whose steps are predictions)."""
    samples: list[tuple[StepFeatures, float]] = []
    if not engine.simulated:
        engine.step_observer = lambda features, seconds: samples.append((features, seconds))
    return samples


def save_samples(engine: LLMEngine, samples: list[tuple[StepFeatures, float]]) -> Calibration | None:
    """Add a real engine's recorded steps to its device's calibration (refits it). A
    tensor-parallel engine's steps are not added: the fit is one device's, and the simulator adds
    the collectives from the interconnect's figures."""
    if engine.simulated or not samples or engine.config.tensor_parallel_size > 1:
        return None
    runner = engine.runner
    assert isinstance(runner, ModelRunner), "a real one-device engine records steps"
    key, name, gpu = local_device(runner.device)
    variant = Variant.of(engine.config, runner.device.type, str(runner.dtype).removeprefix("torch."))
    costs = step_costs(engine.model_config, runner.dtype, engine.config.kv_cache_dtype)
    return record_samples(key, name, gpu, variant, costs, samples)


def probe_shapes(max_num_seqs: int, max_model_len: int, token_cap: int) -> list[tuple[int, int]]:
    """(sequences, prompt length) pairs, cheapest first, each under ``token_cap`` prompt tokens."""
    batches = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < max_num_seqs] + [max_num_seqs]
    contexts = sorted({min(c, max_model_len - 16) for c in (32, 256, 1024, 4096) if max_model_len > 48})
    shapes = [(b, c) for c in contexts for b in batches if b * c <= token_cap]
    return sorted(shapes, key=lambda s: s[0] * s[1])


def calibrate(config: EngineConfig, workloads: list[Workload], budget_s: float, decode_tokens: int = 12,
              token_cap: int | None = None, model: LlamaForCausalLM | None = None,
              stop: Callable[[], bool] = lambda: False) -> CalibrationRun:
    """Probe ``config``'s engine (around ``model`` when one is already loaded) until ``budget_s``
    or ``stop()``, fit the step-cost model and save it. BadInput when no step was measured."""
    start = time.perf_counter()
    engine = LLMEngine(config, model=model)
    try:
        return _calibrate(engine, workloads, start + budget_s, decode_tokens, token_cap, stop, start)
    finally:
        engine.shutdown()


def _calibrate(engine: LLMEngine, workloads: list[Workload], deadline: float, decode_tokens: int,
               token_cap: int | None, stop: Callable[[], bool], start: float) -> CalibrationRun:
    runner = engine.runner
    assert isinstance(runner, ModelRunner), "calibration fits one device"
    warm_up(engine)
    cfg = engine.config
    assert cfg.max_model_len is not None
    on_gpu = runner.device.type == "cuda"
    # Each probe must fit the pool at once (no preemption churn) and stay cheap on a CPU.
    cap = min(token_cap or (1 << 20 if on_gpu else 1 << 14), engine.num_kv_blocks * cfg.block_size // 2)
    vocab = engine.model_config.hf_config.vocab_size
    rng = random.Random(cfg.seed)
    samples = step_recorder(engine)
    probes = 0
    for batch, context in probe_shapes(cfg.max_num_seqs, cfg.max_model_len, cap):
        if time.perf_counter() > deadline or stop():
            break
        prompts = [[rng.randrange(vocab) for _ in range(context)] for _ in range(batch)]
        engine.generate(prompts, SamplingParams(max_tokens=decode_tokens, temperature=0.0, ignore_eos=True))
        probes += 1
    for workload in workloads:
        if workload.trace is not None:  # a trace's text needs a tokenizer: its lengths are in the probes above
            continue
        requests = [r for r in workload.fit_to(cfg.max_model_len).requests(cfg.seed, vocab, None, 64)
                    if len(r.prompt_token_ids) + r.output_len <= cfg.max_model_len]
        # Offline (full batches), then a few users (decodes sharing steps with prefill chunks).
        for load, count in ((Load(offline=True), 64), (Load(concurrency=max(1, cfg.max_num_seqs // 8)), 32)):
            if time.perf_counter() > deadline or stop():
                break
            run_load(engine, requests[:count], load, None, seed=cfg.seed, deadline=deadline, stop=stop)
            probes += 1
    engine.step_observer = None
    if not samples:
        raise BadInput(f"the time budget ({deadline - start:.0f} s) ran out before any step was measured")
    calibration = save_samples(engine, samples)
    assert calibration is not None
    return CalibrationRun(calibration, len(samples), probes, time.perf_counter() - start,
                          local_device(runner.device)[1])
