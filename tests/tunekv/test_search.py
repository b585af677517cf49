"""The search ladder through its Python interface: the planner rules configs out before they run,
the simulator ranks, the study is the only state (resume), Ctrl-C abandons only the running trial,
and real trials reuse one loaded model."""

import dataclasses

import optuna
import pytest
import torch
from optuna.trial import TrialState

import tunekv.search.ladder as search_module
from tunekv.hardware.gpus import gpu_preset
from tunekv.search.ladder import Search, best_trial, fidelity
from tunekv.search.space import default_space, restrict
from tunekv.search.trials import RealRunner, SearchTask, config_of, pool_check
from tunekv.workload.loadgen import Load
from tunekv.workload.metrics import SLO
from tunekv.workload.workloads import LengthDist, Workload

GIB = 1 << 30
SMALL = Workload("small", num_requests=24, prompt_len=LengthDist("uniform", min=16, max=200),
                 output_len=LengthDist("uniform", min=8, max=40))
# A 2.7 GiB card: qwen3-0.6b's weights and the fixed 1 GiB leave a KV pool only at high utilisation.
TINY_GPU = dataclasses.replace(gpu_preset("l4-24gb"), memory_bytes=int(2.7 * GIB))


def sim_task(load=None):
    requests = SMALL.requests(0, 151936)
    return SearchTask(SMALL, requests, SLO(ttft_p99_ms=2000, itl_p99_ms=100), load, 0, 2,
                      {"model": "qwen3-0.6b", "dtype": "auto", "seed": 0}, TINY_GPU, "l4-24gb")


def small_space():
    space = default_space((256, 512), (1,), on_gpu=True)
    return restrict(space, ["block_size=16,max_model_len=256,max_num_batched_tokens=2048,enable_chunked_prefill=on,"
                            "enable_prefix_caching=on,kv_policy=paged"],
                    ["gpu_memory_utilization=0.8:0.95", "max_num_seqs=8:32"])


def study():
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))


def test_the_planner_rules_out_what_cannot_fit_before_it_runs():
    task = sim_task()
    low = {"block_size": 16, "max_model_len": 256, "max_num_seqs": 8, "max_num_batched_tokens": 2048,
           "gpu_memory_utilization": 0.80, "tensor_parallel_size": 1, "enable_chunked_prefill": True,
           "enable_prefix_caching": True, "kv_policy": "paged"}
    blocks, why = pool_check(task, config_of(task, low))
    assert blocks is None and "fewer than one max_model_len sequence" in why
    blocks, why = pool_check(task, config_of(task, {**low, "gpu_memory_utilization": 0.95}))
    assert blocks > 0 and why == ""


def test_simulated_search_finds_the_best_of_a_small_grid_and_records_constraints():
    s = study()
    events = []
    summary = Search(s, sim_task(), small_space(), 120, True, None, events.append, patience=30).run()
    done = s.get_trials(states=(TrialState.COMPLETE,))
    unfit = [t for t in done if t.constraints["fits"] > 0]
    assert unfit and all(t.value == 0 and "KV" in t.user_attrs["reason"] for t in unfit)
    assert all(t.user_attrs["outcome"]["seconds"] < 1.0 for t in unfit), "an unfit config must not run"
    fit = {t.user_attrs["key"]: t.value for t in done if t.constraints["fits"] <= 0}
    assert len(fit) == 9, "every fitting point of the grid (9 of 12) was simulated"
    assert summary.best is not None and summary.best.value == max(fit.values())
    assert summary.best.params == {"max_num_seqs": 32, "gpu_memory_utilization": 0.95}
    assert summary.reason in ("converged", "space covered")
    assert events[0].kind == "start" and events[-1].kind == "end"
    assert {e.kind for e in events} >= {"stage", "trial"}


def test_a_second_run_resumes_the_same_study():
    s = study()
    Search(s, sim_task(), small_space(), 120, True, None, patience=30).run()
    before = len(s.trials)
    events = []
    Search(s, sim_task(), small_space(), 30, True, None, events.append, patience=5).run()
    assert events[0].data["trials_before"] == before
    repeats = [e.data for e in events if e.kind == "trial"]
    assert repeats and all(r["same_as"] is not None for r in repeats), "seen configs are not simulated again"


def test_stopping_abandons_only_the_running_trial(monkeypatch):
    s = study()
    search = Search(s, sim_task(), small_space(), 120, True, None, patience=30)
    real_simulate = search_module.simulate
    calls = []

    def simulate_then_stop(task, point, stop):
        calls.append(point)
        if len(calls) == 3:
            search.request_stop()   # Ctrl-C while the third simulation runs
        return real_simulate(task, point, stop)

    monkeypatch.setattr(search_module, "simulate", simulate_then_stop)
    summary = search.run()
    assert summary.interrupted and summary.reason == "interrupted"
    states = [t.state for t in s.trials]
    assert states.count(TrialState.RUNNING) == 0
    failed = [t for t in s.trials if t.state == TrialState.FAIL]
    assert failed and failed[-1].user_attrs["reason"] == "interrupted"
    assert sum(1 for t in s.trials if t.state == TrialState.COMPLETE) >= 1


def cpu_task():
    wl = Workload("cpu", num_requests=6, prompt_len=LengthDist("fixed", value=12),
                  output_len=LengthDist("fixed", value=6))
    return SearchTask(wl, wl.requests(0, 512), SLO(ttft_p99_ms=60_000, itl_p99_ms=60_000), Load(concurrency=2), 0, 0,
                      {"model": "tiny-llama", "dtype": "float32", "seed": 0, "device": "cpu"}, None, None)


POINT = {"block_size": 8, "max_model_len": 64, "max_num_seqs": 4, "max_num_batched_tokens": 64,
         "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1, "enable_chunked_prefill": True,
         "enable_prefix_caching": True, "kv_policy": "paged"}


def test_real_trials_keep_the_model_loaded_and_refit_the_cost_model():
    runner = RealRunner(cpu_task(), max_model_len=128)
    first = runner.run(POINT, lambda: False)
    model = runner._model
    second = runner.run({**POINT, "block_size": 16, "max_num_seqs": 2}, lambda: False)
    assert runner._model is model, "the second trial loaded the weights again"
    for outcome in (first, second):
        assert outcome.feasible and outcome.value > 0 and outcome.metrics.completed == 6
    assert "refitted" in runner.calibration_note


def test_out_of_memory_in_a_trial_is_an_infeasible_result(monkeypatch):
    import tunekv.search.trials as trials

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trials, "LLMEngine", oom)
    outcome = RealRunner(cpu_task(), max_model_len=128).run(POINT, lambda: False)
    assert not outcome.feasible and outcome.constraints == {"fits": 1.0}
    assert outcome.reason.startswith("out of memory: CUDA out of memory")


def test_best_prefers_certified_then_real_and_drops_failed_certifications():
    s = study()
    dist = {"x": optuna.distributions.CategoricalDistribution((1, 2, 3))}

    def add(x, value, level, ok=True):
        s.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist, value=value,
                                              user_attrs={"fidelity": level, "key": str(x)},
                                              system_attrs={"constraints:fits": 0.0 if ok else 1.0}))

    add(1, 900.0, "sim")
    add(2, 500.0, "real")
    assert fidelity(best_trial(s)) == "real"
    add(3, 400.0, "real")
    add(3, 390.0, "certified")
    assert best_trial(s).value == 390.0
    add(2, 480.0, "certified", ok=False)
    assert best_trial(s).value == 390.0
    add(1, 999.0, "certified", ok=False)
    assert best_trial(s).value == 390.0


def test_a_config_measured_over_the_slo_is_not_exported_on_its_prediction():
    s = study()
    dist = {"x": optuna.distributions.CategoricalDistribution((1, 2))}
    for x, value, level, ok in ((1, 900.0, "sim", True), (1, 0.0, "real", False), (2, 500.0, "sim", True)):
        s.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist, value=value,
                                              user_attrs={"fidelity": level, "key": str(x)},
                                              system_attrs={"constraints:ttft_p99": -0.1 if ok else 0.4}))
    assert best_trial(s).params == {"x": 2}, "config 1 missed its SLO when measured"


def test_a_queued_trial_another_process_took_leaves_this_one_simulating():
    s = study()
    search = Search(s, sim_task(), small_space(), 60, True, None)
    outcome, cached, _ = search._trial(until=search.deadline)   # nothing queued: asked for real, got a fresh trial
    assert s.trials[0].user_attrs["fidelity"] == "sim" and outcome is not None and not cached


def test_unknown_constraint_key_format_is_optunas(tmp_path):
    """The test above writes constraints as Optuna stores them; check that format against set_constraint."""
    s = study()
    trial = s.ask()
    trial.set_constraint("fits", 1.0)
    s.tell(trial, 1.0)
    assert s.trials[0].system_attrs == {"constraints:fits": 1.0}
    assert s.trials[0].constraints == {"fits": 1.0}


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
