"""Tensor parallelism in the planner, the simulator and the search: weights and KV per rank, the
all-reduces priced from the GPU preset's interconnect, tp searched per GPU, and configs that
need more GPUs than this machine has marked as predicted."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import optuna
import pytest
from optuna.trial import TrialState

from tests.tunekv.helpers import SMALL, TINY_GPU, StandInRunner
from tests.tunekv.run_cli import tunekv
from tunekv.engine import EngineConfig
from tunekv.engine.model_config import load_model_config
from tunekv.engine.step_cost import ModelCosts, StepCostModel, StepCostParams, StepFeatures
from tunekv.hardware.gpus import comm_cost, gpu_preset
from tunekv.predict.planner import plan_for_gpu
from tunekv.search.ladder import Search, best_beyond
from tunekv.search.records import TrialRecord
from tunekv.search.space import default_space, restrict
from tunekv.search.trials import Outcome, SearchTask, infeasible
from tunekv.workload.metrics import SLO

CONFIG = EngineConfig(model="llama-3-8b", max_model_len=8192, max_num_seqs=256, max_num_batched_tokens=8192)


def test_tp_divides_the_weights_and_the_kv_per_rank():
    mc = load_model_config("llama-3-8b")
    one = plan_for_gpu(CONFIG, gpu_preset("h100-80gb"))
    two = plan_for_gpu(dataclasses.replace(CONFIG, tensor_parallel_size=2), gpu_preset("h100-80gb"))
    assert two.tp == 2 and one.tp_comm is None
    assert two.weights_bytes == mc.num_params * 2 // 2
    assert 2 * two.kv_bytes_per_token == one.kv_bytes_per_token
    # Half the KV a token and more free memory a rank: more than twice the blocks.
    assert two.num_kv_blocks > 2 * one.num_kv_blocks


def test_kv_heads_fewer_than_the_ranks_are_replicated_not_split():
    mc = load_model_config("tiny-llama")  # 2 KV heads
    assert mc.kv_bytes_per_token(2, 4) == mc.kv_bytes_per_token(2, 2) == mc.kv_bytes_per_token(2, 1) // 2


def test_all_reduce_cost_per_layer_comes_from_the_interconnect():
    tp2 = dataclasses.replace(CONFIG, tensor_parallel_size=2)
    nvlink = plan_for_gpu(tp2, gpu_preset("h100-80gb")).tp_comm
    pcie = plan_for_gpu(tp2, gpu_preset("l40s-48gb")).tp_comm
    assert nvlink is not None and pcie is not None
    assert (nvlink.interconnect, pcie.interconnect) == ("nvlink", "pcie")
    hidden, ring = 4096, 2 * (2 - 1) / 2
    for comm, spec in ((nvlink, gpu_preset("h100-80gb")), (pcie, gpu_preset("l40s-48gb"))):
        for phase, tokens in (("decode", 256), ("prefill", 8192)):
            expected = 2 * (spec.allreduce_latency_s + tokens * hidden * 2 * ring / spec.interconnect_bytes_s)
            assert getattr(comm.per_layer_us, phase) == pytest.approx(expected * 1e6)
    assert pcie.per_layer_us.prefill > 10 * nvlink.per_layer_us.prefill


def test_a_simulated_tp_step_adds_the_collectives_to_one_ranks_work():
    mc = load_model_config("llama-3-8b")
    costs = ModelCosts.from_model(mc, 2, 2)
    params = StepCostParams(4e-3, 2e-2, 1e-5, 2e-5, 1 / 350e12, 1 / 100e12, 1 / 2.6e12)
    link = comm_cost(gpu_preset("h100-80gb"))
    with_comm = StepCostModel(costs, params, link)
    alone = StepCostModel(dataclasses.replace(costs, collectives_per_step=0), params)
    step = StepFeatures(num_seqs=64, num_tokens=64, num_sampled=64, context_tokens=64 * 900, attn_pairs=64 * 900,
                        num_prefills=0)
    layers, hidden, vocab = 32, 4096, 128256
    sent = (2 * layers + 1) * hidden * 2 * 1.0 * 64 + vocab * 2 * 0.5 * 64
    assert with_comm.predict(step) - alone.predict(step) == pytest.approx(
        (2 * layers + 2) * link.latency_s + sent / link.bytes_per_s)
    # One rank does half the matmul work of a single device.
    assert costs.linear_flops_per_token == ModelCosts.from_model(mc, 2, 1).linear_flops_per_token / 2
    with pytest.raises(AssertionError, match="needs the interconnect"):
        StepCostModel(costs, params)


def test_plan_command_prints_the_all_reduce_cost():
    text = tunekv("plan", "--model", "llama-3-70b", "--gpu", "h100-80gb", "--tp", "4")
    assert text.returncode == 0, text.stderr
    assert "all-reduce over NVLink (450 GB/s" in text.stdout
    data = json.loads(tunekv("plan", "--model", "llama-3-8b", "--gpu", "l4-24gb", "--tp", "2", "--json").stdout)
    assert data["tp"] == 2 and data["tp_comm"]["interconnect"] == "pcie"
    bad = tunekv("plan", "--model", "smollm2-135m", "--gpu", "h100-80gb", "--tp", "2")
    assert bad.returncode == 2 and "tensor_parallel_size (2) must divide the model's 9 attention heads" in bad.stderr
    assert "Traceback" not in bad.stderr


def _task(local_gpus: int) -> SearchTask:
    requests = SMALL.requests(0, 151936)
    return SearchTask(SMALL, requests, SLO(ttft_p99_ms=2000, itl_p99_ms=100), None, 0, 2,
                      {"model": "qwen3-0.6b", "dtype": "auto", "seed": 0}, TINY_GPU, "l4-24gb", local_gpus)


def _space():
    space = default_space((256,), (1, 2), on_gpu=True)
    return restrict(space, ["block_size=16,max_num_batched_tokens=2048,enable_chunked_prefill=on,"
                            "enable_prefix_caching=on,kv_policy=paged,max_num_seqs=16"],
                    ["gpu_memory_utilization=0.9:0.95"])


def test_the_search_compares_tp_sizes_per_gpu():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    Search(study, _task(0), _space(), 60, True, None, patience=6).run()
    done = study.get_trials(states=(TrialState.COMPLETE,))
    sizes = {t.user_attrs["point"]["tensor_parallel_size"] for t in done}
    assert sizes == {1, 2}
    for t in done:
        tp = t.user_attrs["point"]["tensor_parallel_size"]
        assert t.value == pytest.approx(t.user_attrs["outcome"]["value"] / tp)
        row = TrialRecord.of(t).row()
        assert row.gpus == tp and row.engine_tok_s == t.user_attrs["outcome"]["value"]
        assert not row.predicted_only, "a simulated preset stands for a card: no GPU count here to exceed"


class RecordingRunner(StandInRunner):
    """Stands in for RealRunner: records each config the search sends to a real run, which does not fit."""

    overhead_s = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.points: list[dict] = []

    def run(self, point: dict, stop: Callable[[], bool], start_load: float | None = None,
            certify: bool = False, label: str = "") -> Outcome:
        self.points.append(point)
        return infeasible("a stand-in for a real run")


def test_configs_needing_more_gpus_than_this_machine_are_predicted_only():
    """On a one-GPU machine tp=2 is simulated, never queued for a real run, and reported apart."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    runner = RecordingRunner()
    Search(study, _task(1), _space(), 60, False, runner=runner, patience=6).run()
    done = study.get_trials(states=(TrialState.COMPLETE,))
    beyond = [t for t in done if t.user_attrs["point"]["tensor_parallel_size"] == 2]
    assert beyond and all(t.user_attrs.get("beyond_local") and TrialRecord.of(t).row().predicted_only for t in beyond)
    assert not any(t.user_attrs.get("beyond_local") for t in done if t not in beyond)
    assert runner.points and all(point["tensor_parallel_size"] == 1 for point in runner.points)
    top = best_beyond(study, None)
    assert top is None or top.beyond_local


def test_bench_runs_a_tensor_parallel_config_from_yaml(tmp_path):
    config = tmp_path / "tp2.yaml"
    config.write_text("model: tiny-llama\ntensor_parallel_size: 2\nnum_kv_blocks: 1024\n")
    out = tmp_path / "result.json"
    result = tunekv("bench", "--config", str(config), "--workload", "chat", "--num-requests", "6", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["config"]["tensor_parallel_size"] == 2 and data["metrics"]["completed"] == 6
