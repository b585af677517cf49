"""The simulated executor: the same scheduling decisions as the real engine, on a virtual clock
that advances by exactly the cost model's predictions."""

from __future__ import annotations

import random

import pytest

from tunekv.engine import EngineConfig, LLMEngine, SamplingParams
from tunekv.engine.model_config import load_model_config
from tunekv.engine.step_cost import ModelCosts, StepCostModel, StepCostParams, StepFeatures

COSTS = ModelCosts.from_model(load_model_config("tiny-llama"), 4)


def cost_model(overhead: float = 1e-3, mixed: float = 0.0, per_seq: float = 0.0, per_prefill: float = 0.0,
               lin: float = 0.0, attn: float = 0.0, byte: float = 0.0) -> StepCostModel:
    return StepCostModel(COSTS, StepCostParams(overhead, mixed, per_seq, per_prefill, lin, attn, byte))


def schedule_trace(engine: LLMEngine) -> list:
    trace = []
    schedule = engine.scheduler.schedule

    def recorded():
        out = schedule()
        trace.append(([r.request_id for r in out.requests], list(out.num_new_tokens), [r.request_id for r in
                                                                                         out.preempted]))
        return out

    engine.scheduler.schedule = recorded
    return trace


@pytest.mark.parametrize("overrides", [
    {"num_kv_blocks": 14, "max_num_batched_tokens": 24, "max_num_seqs": 6, "max_model_len": 112},  # preemption
    {"num_kv_blocks": 40, "kv_policy": "contiguous", "max_model_len": 96},
    {"num_kv_blocks": 40, "batching": "static", "max_num_seqs": 4},
])
def test_simulation_makes_the_real_engines_scheduling_decisions(overrides):
    config = EngineConfig(**{"model": "tiny-llama", "device": "cpu", "block_size": 8, "max_model_len": 128,
                             "seed": 3, **overrides})
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 500) for _ in range(rng.randint(3, 40))] for _ in range(10)]
    params = [SamplingParams(max_tokens=rng.randint(1, 30), temperature=0.0, ignore_eos=True) for _ in prompts]
    real, sim = LLMEngine(config), LLMEngine(config, cost_model())
    real_trace, sim_trace = schedule_trace(real), schedule_trace(sim)
    real_out, sim_out = real.generate(prompts, params), sim.generate(prompts, params)
    assert sim_trace == real_trace
    assert [len(o.output_token_ids) for o in sim_out] == [len(o.output_token_ids) for o in real_out]
    assert sim.scheduler.num_preemptions == real.scheduler.num_preemptions
    assert sim.simulated and not real.simulated


def test_virtual_clock_advances_by_each_steps_predicted_cost():
    config = EngineConfig(model="tiny-llama", device="cpu", block_size=8, num_kv_blocks=64, max_model_len=512,
                          max_num_batched_tokens=32, max_num_seqs=4)
    model = cost_model(overhead=0.002, mixed=0.010, per_seq=0.001, per_prefill=0.003)
    engine = LLMEngine(config, model)
    engine.add_request("a", list(range(1, 41)), SamplingParams(max_tokens=3, ignore_eos=True), arrival_time=0.0)
    steps = []
    engine.step_observer = lambda features, seconds: steps.append((features, seconds))
    while engine.has_unfinished_requests():
        engine.step()
    # 40 prompt tokens in chunks of 32 + 8 (prefill steps), then two decode steps.
    first, second = 0.002 + 0.010 + 0.001 + 0.003, 0.002 + 0.010 + 0.001 + 0.003
    decode = 0.002 + 0.001
    assert [round(s, 9) for _, s in steps] == [round(x, 9) for x in (first, second, decode, decode)]
    assert [f.num_tokens for f, _ in steps] == [32, 8, 1, 1]
    assert [f.num_sampled for f, _ in steps] == [0, 1, 1, 1]
    assert engine.clock.now() == pytest.approx(first + second + 2 * decode)


def test_token_times_come_from_the_virtual_clock():
    engine = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", num_kv_blocks=64, max_model_len=64),
                       cost_model(overhead=0.5))
    out = engine.generate([[5, 6, 7]], SamplingParams(max_tokens=4, ignore_eos=True))[0]
    assert out.metrics.token_times == [0.5, 1.0, 1.5, 2.0] and out.metrics.first_token_time == 0.5


def test_a_simulated_engine_needs_its_pool():
    with pytest.raises(ValueError, match="simulated engine needs its KV pool"):
        LLMEngine(EngineConfig(model="tiny-llama", device="cpu"), cost_model())
    sized = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", kv_cache_memory_bytes=1 << 20, block_size=16),
                      cost_model())
    assert sized.num_kv_blocks == (1 << 20) // (COSTS.kv_bytes_per_token * 16)


def test_roofline_takes_the_slower_of_compute_and_memory_for_each_phase():
    model = cost_model(overhead=0.0, lin=1e-12, attn=1e-11, byte=1e-9)
    one = StepFeatures(num_seqs=1, num_tokens=1, num_sampled=1, context_tokens=100, attn_pairs=100, num_prefills=0)
    linear, attn, weights, kv = model.costs.work(one)
    assert model.predict(one) == pytest.approx(max(linear * 1e-12, weights * 1e-9) + max(attn * 1e-11, kv * 1e-9))
    assert weights == COSTS.weight_bytes and kv == COSTS.kv_bytes_per_token * 101


def test_an_injected_executor_runs_the_steps_and_describes_its_device():
    """A caller that builds the executor (the simulator, which knows what it simulates) hands it
    to the engine; the engine's counters and KV usage read the run without reaching inside."""
    from tunekv.engine.resolve import resolve_config
    from tunekv.engine.simulated_executor import SimulatedExecutor

    config = EngineConfig(model="tiny-llama", device="cpu", block_size=8, num_kv_blocks=12, max_model_len=64,
                          max_num_batched_tokens=32, max_num_seqs=4)
    resolved, mc = resolve_config(config)
    executor = SimulatedExecutor(resolved, mc, cost_model(), {"type": "simulated", "name": "a test card"})
    engine = LLMEngine(config, executor=executor)
    assert engine.runner is executor and engine.simulated
    assert engine.runner.device_description() == {"type": "simulated", "name": "a test card"}
    assert engine.kv_usage() == (0, 0)
    prompts = [[7 + i] * 20 for i in range(4)]   # 4 x (20 + 12) tokens > 12 blocks of 8: preemption
    engine.add_request("a", prompts[0], SamplingParams(max_tokens=12, ignore_eos=True))
    engine.step()
    stored, reserved = engine.kv_usage()
    assert 0 < stored <= reserved and reserved % 8 == 0
    engine.generate(prompts[1:], SamplingParams(max_tokens=12, ignore_eos=True))
    counters = engine.counters()
    assert counters.num_preemptions > 0 and counters.peak_running_seqs >= 2 and counters.peak_used_blocks <= 12
    engine.reset_peak_stats()
    assert engine.counters().peak_used_blocks == 0 and engine.counters().num_preemptions == counters.num_preemptions
    assert engine.kv_stats().cached_blocks > 0
    engine.reset_prefix_cache()
    assert engine.kv_stats().cached_blocks == 0
