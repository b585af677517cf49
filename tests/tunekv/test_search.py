"""The search ladder through its Python interface: the planner rules configs out before they run,
the simulator ranks, the study is the only state (resume), Ctrl-C abandons only the running trial,
and real trials reuse one loaded model."""

import dataclasses
import hashlib
import json
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

import tunekv.search.ladder as search_module
from tests.tunekv.helpers import SMALL, TINY_GPU, StandInRunner, best
from tunekv.engine.llm_engine import MAX_KV_BLOCKS
from tunekv.errors import BadInput
from tunekv.hardware.gpus import gpu_preset
from tunekv.render.trials import TUI_COLUMNS, capacity_words, rank, table_columns, trial_cells
from tunekv.search.baseline import DEFAULTS_ATTR, defaults_point, versus_defaults
from tunekv.search.ladder import Search, best_trial
from tunekv.search.options import SearchOptions
from tunekv.search.records import Prediction, TrialRecord, TrialWriter, config_key, queued_attrs
from tunekv.search.report import markdown
from tunekv.search.session import SPEC_KEYS, open_study, prepare_search
from tunekv.search.space import default_space, restrict
from tunekv.search.trials import Outcome, RealRunner, SearchTask, config_of, infeasible, pool_check, simulate
from tunekv.workload.loadgen import KvSummary, Load
from tunekv.workload.metrics import SLO, LatencySummary, ServingMetrics, looser_profiles, parse_slo
from tunekv.workload.workloads import LengthDist, Workload, load_workload


def sim_task(load=None):
    requests = SMALL.requests(0, 151936)
    return SearchTask(SMALL, requests, SLO(ttft_p99_ms=2000, itl_p99_ms=100), load, 0, 2,
                      {"model": "qwen3-0.6b", "dtype": "auto", "seed": 0}, TINY_GPU, "l4-24gb")


def small_space():
    space = default_space((256, 512), (1,), on_gpu=True)
    return restrict(space, ["block_size=16,max_model_len=256,max_num_batched_tokens=2048,enable_chunked_prefill=on,"
                            "enable_prefix_caching=on,kv_policy=paged,kv_cache_dtype=auto"],
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


def test_a_small_model_on_a_big_card_gets_the_engines_largest_pool_not_a_refusal():
    """tiny-llama's KV on an H100 sizes to more blocks than the engine manages: capped, as the
    engine caps its own pool, so the trial simulates instead of failing as "does not fit"."""
    task = SearchTask(SMALL, SMALL.requests(0, 512), SLO(ttft_p99_ms=2000, itl_p99_ms=100), None, 0, 2,
                      {"model": "tiny-llama", "dtype": "auto", "seed": 0}, gpu_preset("h100-80gb"), "h100-80gb")
    point = {"block_size": 8, "max_model_len": 256, "max_num_seqs": 8, "max_num_batched_tokens": 2048,
             "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1, "enable_chunked_prefill": True,
             "enable_prefix_caching": True, "kv_policy": "paged"}
    assert pool_check(task, config_of(task, point)) == (MAX_KV_BLOCKS, "")
    outcome = simulate(task, point, lambda: False)
    assert outcome.constraints["fits"] <= 0 and outcome.capacity, outcome.reason


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
    repeats = [e.trial for e in events if e.kind == "trial"]
    assert repeats and all(r.same_as is not None for r in repeats), "seen configs are not simulated again"


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
    model = runner.model(config_of(runner.task, POINT))   # the weights the first trial loaded
    second = runner.run({**POINT, "block_size": 16, "max_num_seqs": 2}, lambda: False)
    assert runner.model(config_of(runner.task, POINT)) is model, "the second trial loaded the weights again"
    for outcome in (first, second):
        assert outcome.feasible and outcome.value > 0 and outcome.metrics.completed == 6
    assert "refitted" in runner.calibration_note


def test_a_real_trial_on_a_trace_searches_its_pace_from_the_simulators_answer_and_certifies_it(tmp_path):
    path = tmp_path / "t.jsonl"   # 8 requests over 0.7 s
    path.write_text("".join(json.dumps({"prompt_len": 12, "output_len": 6, "arrival_s": round(0.1 * i, 1)}) + "\n"
                            for i in range(8)))
    wl = load_workload(str(path))
    task = SearchTask(wl, wl.requests(0, 512), SLO(ttft_p99_ms=60_000, itl_p99_ms=60_000), None, 0, 0,
                      {"model": "tiny-llama", "dtype": "float32", "seed": 0, "device": "cpu"}, None, None)
    runner = RealRunner(task, max_model_len=128)
    real = runner.run(POINT, lambda: False, start_load=256.0)
    assert real.unit == "x" and [p for p, _ in real.probes] == [256.0, 512.0, 1024.0] and real.capacity_capped
    assert real.metrics.completed == 8
    certified = runner.run(POINT, lambda: False, start_load=real.capacity, certify=True)
    assert certified.unit == "x" and certified.capacity == 1024.0 and len(certified.certify) == 2
    assert certified.feasible and certified.metrics.completed == 8


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
    assert best_trial(s).fidelity == "real"
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


def test_a_space_change_says_what_was_pinned_or_released_not_every_fixed_knob():
    events = []
    space = small_space()
    search = Search(study(), sim_task(), space, 60, True, None, events.append)
    search.set_space(restrict(space, ["max_num_seqs=16"], []))
    search.set_space(space)
    notes = [e.data["message"] for e in events if e.kind == "note"]
    assert notes == ["search space changed: max_num_seqs=16 pinned", "search space changed: max_num_seqs released"]


def test_unknown_constraint_key_format_is_optunas(tmp_path):
    """The test above writes constraints as Optuna stores them; check that format against set_constraint."""
    s = study()
    trial = s.ask()
    trial.set_constraint("fits", 1.0)
    s.tell(trial, 1.0)
    assert s.trials[0].system_attrs == {"constraints:fits": 1.0}
    assert s.trials[0].constraints == {"fits": 1.0}


def an_outcome(reason: str = "") -> Outcome:
    lat = LatencySummary(120.0, 110.0, 150.0, 180.0, (170.0, 195.0))
    metrics = ServingMetrics(lat, lat, lat, lat, 3.0, 300.0, 900.0, 2.5, 0.9, 30, 0, 10.0)
    return Outcome(300.0, {"fits": 0.0, "ttft_p99": -0.2}, 12, True, metrics, KvSummary(512, 16, 400, 12, 0.8, 1),
                   reason=reason, seconds=4.0, run_seconds=10.0, probes=[(8, True), (16, True)])


def test_an_outcome_is_stored_in_the_bench_result_shape_and_reads_back():
    outcome = an_outcome()
    attrs = outcome.to_attrs()
    assert attrs["metrics"] == outcome.metrics.to_json() and attrs["kv"] == outcome.kv.to_json()
    assert attrs["metrics"]["ttft_ms"]["p99_ci95"] == [170.0, 195.0]
    assert Outcome.from_attrs(attrs) == outcome
    stored = json.loads(json.dumps(attrs))   # a journal or RDB storage: tuples come back as lists
    assert Outcome.from_attrs(stored) == outcome
    assert Outcome.from_attrs(infeasible("no room").to_attrs()) == infeasible("no room")


def test_an_outcome_stored_before_capacity_units_reads_back_in_users():
    attrs = an_outcome().to_attrs()
    del attrs["unit"]
    assert Outcome.from_attrs(attrs).unit == "users"


def test_trial_records_read_back_what_the_writer_stored():
    s = study()
    point = {**POINT, "tensor_parallel_size": 2}
    s.enqueue_trial({"x": 1}, user_attrs=queued_attrs("real", 16.0, point))
    trial = s.ask()
    writer = TrialWriter(trial)
    assert writer.queued_fidelity == "real" and writer.queued_start_load == 16.0
    writer.set_owner("host:1")
    writer.set_config("real", point, beyond_local=True)
    writer.set_same_as(0)
    predicted = Prediction(150.0, 12, True, 9.0, 170.0, None)
    writer.set_predicted(predicted)
    outcome = an_outcome(reason="slow")
    writer.set_outcome(outcome)
    trial.suggest_categorical("x", (1, 2))
    frozen = s.tell(trial, 150.0)
    # The stored format: these keys, plain values (resumed searches and other processes read them).
    assert frozen.user_attrs == {"fidelity": "real", "start_load": 16.0, "key": config_key(point), "owner": "host:1",
                                 "point": point, "beyond_local": True, "same_as": 0,
                                 "predicted": dataclasses.asdict(predicted), "outcome": outcome.to_attrs(),
                                 "reason": "slow"}
    record = TrialRecord.of(frozen)
    assert (record.number, record.state, record.value, record.params) == (0, "complete", 150.0, {"x": 1})
    assert (record.fidelity, record.point, record.key, record.owner) == ("real", point, config_key(point), "host:1")
    assert record.start_load == 16.0 and record.beyond_local and record.same_as == 0 and record.reason == "slow"
    assert record.predicted == predicted and record.outcome == outcome and record.gpus == 2
    fresh = TrialRecord.of(optuna.trial.create_trial(value=1.0))
    assert (fresh.fidelity, fresh.point, fresh.outcome, fresh.beyond_local, fresh.reason) == ("sim", None, None,
                                                                                                False, "")


def test_a_trial_event_prints_the_same_fields_as_before():
    """`tunekv search --json-lines` is an interface: a trial's row flattened into the event."""
    s = study()
    s.add_trial(optuna.trial.create_trial(value=150.0, user_attrs={
        "fidelity": "sim", "point": POINT, "key": config_key(POINT), "outcome": an_outcome().to_attrs()},
        system_attrs={"constraints:fits": 0.0, "constraints:ttft_p99": 0.35}))
    row = TrialRecord.of(s.trials[0]).row()
    line = json.loads(search_module.Event("trial", trial=row).to_json())
    assert list(line) == ["event", "time", "number", "fidelity", "state", "point", "value", "engine_tok_s", "gpus",
                          "predicted_only", "capacity", "capacity_capped", "ttft_p99_ms", "itl_p99_ms", "feasible",
                          "reason", "worst", "seconds", "same_as", "predicted", "capacity_unit"]
    assert {k: v for k, v in line.items() if k not in ("event", "time", "point")} == {
        "number": 0, "fidelity": "sim", "state": "complete", "value": 150.0, "engine_tok_s": 300.0, "gpus": 1,
        "predicted_only": False, "capacity": 12, "capacity_capped": True, "ttft_p99_ms": 180.0, "itl_p99_ms": 180.0,
        "feasible": False, "reason": "", "worst": "ttft_p99 +35%", "seconds": 4.0, "same_as": None, "predicted": None,
        "capacity_unit": "users"}
    end = json.loads(search_module.Event("end", {"reason": "budget spent", "best": row, "beyond": None}).to_json())
    assert end["best"] == {k: v for k, v in line.items() if k not in ("event", "time")} and end["beyond"] is None


def test_the_reports_trial_counts_add_up_with_a_stopped_trial():
    rec = TrialRecord(3, "complete", 1234.5, {}, {"fits": 0.0}, None, None, fidelity="real", point=POINT,
                      outcome=an_outcome())
    sim = dataclasses.replace(rec, number=4, fidelity="sim")
    stopped = dataclasses.replace(rec, number=5, state="fail", value=None, reason="interrupted")
    text = markdown(best(), [rec, sim, stopped], [])
    assert "Trials: 3 (1 simulated, 1 real, 0 certified; 0 infeasible; 1 unfinished (stopped or failed))." in text


def test_trial_tables_share_their_cells_and_ranking():
    rec = TrialRecord(3, "complete", 1234.5, {}, {"fits": 0.0}, None, None, fidelity="real",
                      point={**POINT, "kv_policy": "contiguous"}, outcome=an_outcome())
    row = rec.row()
    assert trial_cells(row, "cli") == ("3", "real", "1", "8", "64", "4", "64", "0.90", "on", "on", "contiguous",
                                       "1234", ">=12", "180", "180", "yes")
    deployment = dataclasses.replace(row, point={})   # `--endpoint`: nothing was set, nothing is claimed
    assert trial_cells(deployment, "cli")[2:11] == ("-",) * 9
    assert capacity_words(row) == "at 12 users or more", "every probe held: at least that many"
    assert capacity_words(dataclasses.replace(row, capacity_capped=False)) == "at 12 users"
    assert trial_cells(row, "tui") == ("3", "real", "1,234", ">=12", "180", "180", "met", "1", "8", "64", "4", "64",
                                       "0.90", "on", "on", "contig")
    assert len(trial_cells(row, "tui")) == len(TUI_COLUMNS), "a cell for each of the TUI's columns"
    fp8 = dataclasses.replace(row, point={**POINT, "kv_cache_dtype": "fp8"})
    assert trial_cells(fp8, "cli")[10] == "paged fp8" and trial_cells(fp8, "tui")[-1] == "paged fp8"
    assert trial_cells(row, "cli", memory_knob=False)[7] == "-", "on a CPU gpu_memory_utilization means nothing"
    failed = dataclasses.replace(row, state="fail", value=None, feasible=False, worst=None, reason="interrupted")
    assert trial_cells(failed, "cli")[-1] == "fail" and trial_cells(failed, "tui")[6] == "interrupted"
    sim_better = dataclasses.replace(row, fidelity="sim", value=9999.0)
    assert rank(row) > rank(sim_better) > rank(dataclasses.replace(sim_better, value=None))


def test_trial_rows_load_without_optuna_or_torch():
    """The TUI's first paint renders rows: the row type and its renderer import nothing heavy."""
    code = ("import sys, tunekv.render.trials, tunekv.search.records, tunekv.tui.charts; "
            "print(sorted(m for m in ('optuna', 'torch', 'tunekv.search.trials') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_search_of_a_model_shorter_than_the_preset_clips_the_preset(tmp_path):
    said: list[str] = []
    prepared = prepare_search(SearchOptions(model="tiny-llama", workload="chat", out=str(tmp_path)), said.append)
    assert "workload chat: requests clipped to 2048 tokens (tiny-llama's max_position_embeddings); the preset " \
           "allows 3072" in said
    assert set(prepared.space.values("max_model_len")) == {2048}, "no candidate beyond the model"
    assert prepared.study.user_attrs["spec"]["workload_clipped_to"] == 2048
    assert max(len(r.prompt_token_ids) + r.output_len for r in prepared.task.requests) <= 2048


def test_a_search_in_users_keeps_the_study_name_it_had_before_capacity_units(tmp_path):
    prepared = prepare_search(SearchOptions(model="tiny-llama", workload="chat", out=str(tmp_path)), print)
    spec = prepared.study.user_attrs["spec"]
    assert spec["capacity_unit"] == "users" and spec["trace_req_s_at_1x"] is None
    before = {k: spec[k] for k in SPEC_KEYS if k != "capacity_unit"}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8]
    assert prepared.name == f"tiny-llama-chat-{digest}", "the same command must resume a study stored before"


def test_a_trace_longer_than_the_model_is_still_refused(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"prompt_len": 3000, "output_len": 2}\n')
    with pytest.raises(BadInput, match="the trace's longest request \\(3002 tokens\\) exceeds tiny-llama's"):
        prepare_search(SearchOptions(model="tiny-llama", workload=str(trace), out=str(tmp_path)), print)


@pytest.mark.alone
def test_a_search_where_nothing_meets_the_slo_ends_on_a_measurement_at_one_user():
    task = dataclasses.replace(cpu_task(), slo=SLO(ttft_p99_ms=0.01, itl_p99_ms=60_000), load=None)
    runner = RealRunner(task, max_model_len=64)
    # 12 s, the engine's build and warm-up included: 6 s measured nothing in a CI run with both workers busy.
    fitted, note = runner.calibrate(POINT, 12.0, lambda: False)
    assert fitted and "step-cost model fitted on" in note, note
    space = restrict(default_space((64,), (1,), on_gpu=False), ["block_size=8,max_num_batched_tokens=64"],
                     ["max_num_seqs=2:8"])
    summary = Search(study(), task, space, 60.0, False, runner).run()
    assert summary.best is None and summary.counts["real"] == 1, summary
    assert summary.closest is not None and "measured at 1 user: p99 TTFT" in summary.closest
    assert "ttft_p99 binds" in summary.closest, summary.closest


def test_the_defaults_are_the_trial_that_first_simulated_them_not_a_later_repeat():
    s = study()
    s.set_user_attr(DEFAULTS_ATTR, POINT)
    attrs = {"fidelity": "sim", "point": POINT, "key": config_key(POINT), "outcome": an_outcome().to_attrs()}
    s.add_trial(optuna.trial.create_trial(value=150.0, user_attrs=attrs))
    s.add_trial(optuna.trial.create_trial(value=150.0, user_attrs={**attrs, "same_as": 0}))
    versus = versus_defaults(s, TrialRecord.of(s.trials[1]))
    assert versus is not None and versus.defaults.number == 0
    assert versus.describe().startswith("vLLM's defaults (trial 0")


def test_every_study_simulates_vllms_defaults_first_and_the_summary_compares_the_best():
    task = SearchTask(SMALL, SMALL.requests(0, 151936), SLO(ttft_p99_ms=2000, itl_p99_ms=100), None, 0, 2,
                      {"model": "qwen3-0.6b", "dtype": "auto", "seed": 0}, gpu_preset("l4-24gb"), "l4-24gb", 0)
    space = default_space((256, 512), (1,), on_gpu=True)
    shared, events = study(), []
    summary = Search(shared, task, space, search_module.DEFAULTS_MIN_BUDGET_S, True, None, events.append,
                     patience=6).run()
    first = next(e.trial for e in events if e.kind == "trial")
    assert first.number == 0 and first.point == defaults_point(space)
    assert {k: first.point[k] for k in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len")} == {
        "block_size": 16, "max_num_seqs": 256, "max_num_batched_tokens": 8192, "max_model_len": 512}
    versus = summary.defaults
    assert versus is not None and versus.defaults.number == 0 and versus.best is not None
    assert versus.defaults.feasible and versus.gain is not None and versus.gain >= 0, "the best is the top simulation"
    assert versus.describe().startswith(f"vLLM's defaults (trial 0, simulated) {versus.defaults.value:.0f} output "
                                        "tok/s per GPU under the SLO")
    assert events[-1].data["defaults"]["trial"] == 0 and events[-1].data["defaults"]["gain"] == versus.gain
    # A resumed search compares with the same trial, and does not queue the defaults again.
    again = Search(shared, task, space, search_module.DEFAULTS_MIN_BUDGET_S, True, None, patience=2).run()
    assert again.defaults is not None and again.defaults.defaults.number == 0
    fresh_runs = [t for t in shared.trials if t.user_attrs.get("key") == versus.defaults.key
                  and "same_as" not in t.user_attrs]
    assert len(fresh_runs) == 1, [t.number for t in fresh_runs]
    # A short search keeps its time for the search itself.
    short = Search(study(), task, space, 10.0, True, None, patience=2).run()
    assert short.defaults is None


class SizeRecorder(StandInRunner):
    """Records the request cap each real run gets; the run itself misses the SLO."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int | None] = []

    def run(self, point, stop, start_load=None, certify=False, label=""):
        self.sizes.append(self.max_requests)
        return infeasible("a stand-in for a real run")


def test_the_closest_config_is_measured_even_when_the_simulator_says_it_cannot_finish():
    """A simulator that found nothing feasible may be as wrong about how long a request takes (a
    step-cost fit from a loaded machine): the closest config still runs, on the fewest requests
    that give p99s, and the deadline cuts it if the prediction was right."""
    long = Workload("long", num_requests=8, prompt_len=LengthDist("fixed", value=16),
                    output_len=LengthDist("fixed", value=20_000))
    task = SearchTask(long, long.requests(0, 151936), SLO(ttft_p99_ms=0.01), None, 0, 0,
                      {"model": "qwen3-0.6b", "dtype": "auto", "seed": 0}, gpu_preset("l4-24gb"), "l4-24gb", 1)
    space = restrict(default_space((20_480,), (1,), on_gpu=True),
                     ["block_size=16,enable_chunked_prefill=on,enable_prefix_caching=off,kv_policy=paged,"
                      "gpu_memory_utilization=0.9,max_num_batched_tokens=2048"], [])
    runner = SizeRecorder()
    summary = Search(study(), task, space, 30.0, False, runner, patience=2).run()
    assert summary.best is None and summary.counts["sim"] >= 1, summary
    assert runner.sizes == [search_module.MIN_CLOSEST_REQUESTS], runner.sizes


def test_a_search_that_met_nothing_suggests_only_looser_profiles():
    assert looser_profiles(parse_slo("interactive")) == ["relaxed"]
    assert looser_profiles(parse_slo("relaxed")) == [], "batch sets an E2E target relaxed leaves open"
    assert looser_profiles(parse_slo("ttft_p99=100ms,itl_p99=20ms,e2e_p99=10s")) == ["batch", "interactive", "relaxed"]
    assert looser_profiles(parse_slo("e2e_p99=60s")) == ["batch"]


class FirstCalibrationMeasuresNothing(RealRunner):
    """As on a loaded machine, where the first calibration's budget went before any step."""

    calls = 0

    def calibrate(self, point, seconds, stop):
        self.calls += 1
        if self.calls == 1:
            return False, "step-cost calibration failed: the time budget (8 s) ran out before any step was measured"
        # Up to 12 s, the engine's build and warm-up included: 6 s measured nothing in one CI run
        # with both workers busy.
        return super().calibrate(point, min(seconds, 12.0), stop)


@pytest.mark.alone
def test_a_calibration_that_measured_nothing_is_tried_again_while_time_is_left():
    runner = FirstCalibrationMeasuresNothing(cpu_task(), max_model_len=64)
    space = restrict(default_space((64,), (1,), on_gpu=False), ["block_size=8,max_num_batched_tokens=64"],
                     ["max_num_seqs=2:8"])
    events = []
    summary = Search(study(), cpu_task(), space, 30.0, False, runner, events.append).run(needs_calibration=True)
    stages = [e.data["name"] for e in events if e.kind == "stage"]
    assert stages[:3] == ["calibrate", "calibrate", "simulate"] and runner.calls == 2, stages
    assert summary.counts["sim"] >= 1 and summary.reason != "no calibration", summary


def trace_task(tmp_path, load=None):
    """24 requests over 2.3 s (about 10.4 req/s at the recorded pace) on the tiny GPU, whose
    simulated p99 TTFT passes 100 ms between 28x and 32x that pace."""
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"prompt_len": 16 + 8 * i, "output_len": 8 + i, "arrival_s": round(0.1 * i, 3)})
                            + "\n" for i in range(24)))
    wl = load_workload(str(path))
    return SearchTask(wl, wl.requests(0, 151936), SLO(ttft_p99_ms=100, itl_p99_ms=100), load, 0, 2,
                      {"model": "qwen3-0.6b", "dtype": "auto", "seed": 0}, TINY_GPU, "l4-24gb")


FITS = {"block_size": 16, "max_model_len": 256, "max_num_seqs": 32, "max_num_batched_tokens": 2048,
        "gpu_memory_utilization": 0.95, "tensor_parallel_size": 1, "enable_chunked_prefill": True,
        "enable_prefix_caching": True, "kv_policy": "paged", "kv_cache_dtype": "auto"}


def test_a_trace_on_its_own_times_is_searched_at_the_fastest_pace_that_holds_the_slo(tmp_path):
    task = trace_task(tmp_path)
    assert task.unit == "x" and task.pace_rate == pytest.approx(24 / 2.3)
    outcome = simulate(task, FITS, lambda: False)
    assert outcome.unit == "x" and outcome.feasible, outcome.reason
    paces = [pace for pace, _ in outcome.probes]
    held = [pace for pace, ok in outcome.probes if ok]
    missed = [pace for pace, ok in outcome.probes if not ok]
    first_miss = next(i for i, (_, ok) in enumerate(outcome.probes) if not ok)
    assert paces[0] == 1.0 and outcome.capacity == max(held)
    assert paces[:first_miss + 1] == [2.0 ** k for k in range(first_miss + 1)], \
        "doubling from the recorded pace until the SLO breaks"
    assert max(held) < min(missed) and not outcome.capacity_capped
    stored = Outcome.from_attrs(json.loads(json.dumps(outcome.to_attrs())))
    assert stored.unit == "x" and stored.capacity == outcome.capacity
    s = study()
    s.add_trial(optuna.trial.create_trial(value=outcome.value, user_attrs={
        "fidelity": "sim", "point": FITS, "key": config_key(FITS), "outcome": outcome.to_attrs()}))
    row = TrialRecord.of(s.trials[0]).row()
    assert row.capacity_unit == "x" and f"{outcome.capacity:g}x" in trial_cells(row, "cli")
    assert table_columns("tui", "x")[3] == "pace" and table_columns("cli")[12] == "users"


def test_a_fixed_pace_is_the_load_every_trial_runs_at(tmp_path):
    task = trace_task(tmp_path, Load(trace=True, speedup=2.0))
    assert task.unit == "x" and task.pace_rate is None, "a fixed pace is not searched"
    outcome = simulate(task, FITS, lambda: False)
    assert outcome.unit == "x" and outcome.capacity == 2.0 and [p for p, _ in outcome.probes] == [2.0]


def test_fresh_seeds_move_a_traces_rows_over_its_recorded_arrival_times(tmp_path):
    """Certification's fresh seeds on a trace's own times: the same arrivals, other requests at each."""
    task = trace_task(tmp_path)
    fresh = task.more_requests(1000, 151936, len(task.requests))
    assert [r.arrival_s for r in fresh] == [r.arrival_s for r in task.requests]
    assert sorted((r.prompt_token_ids, r.output_len) for r in fresh) == sorted(
        (r.prompt_token_ids, r.output_len) for r in task.requests)
    assert [r.output_len for r in fresh] != [r.output_len for r in task.requests]


def test_a_study_stored_before_capacity_units_resumes_as_users_and_refuses_a_pace():
    storage = optuna.storages.InMemoryStorage()
    spec = {k: None for k in SPEC_KEYS if k != "capacity_unit"}   # as a study before the key existed stored it
    open_study(storage, "s", spec, "memory")
    assert open_study(storage, "s", {**spec, "capacity_unit": "users"}, "memory").study_name == "s"
    with pytest.raises(BadInput, match="study s searched closed-loop users on this trace, which is searched at its "
                                       "own arrival times now"):
        open_study(storage, "s", {**spec, "capacity_unit": "x"}, "memory")
    with pytest.raises(BadInput, match=r"other settings \(seed, capacity_unit differ\)"):
        open_study(storage, "s", {**spec, "seed": 1, "capacity_unit": "x"}, "memory")


def test_a_cut_capacity_search_keeps_the_probes_that_finished():
    probes = [(16.0, True), (32.0, True), (64.0, False)]
    cut = Outcome(1000.0, {"ttft_p99": -0.2}, 32.0, False, probes=probes, cut=True)
    settled = cut.settled()
    assert settled is not None and not settled.cut and settled.capacity_capped and settled.feasible
    assert settled.reason == "the deadline cut the capacity search after 3 probe(s): at least 32 users"
    assert Outcome(0.0, {}, cut=True).settled() is None, "no finished probe: nothing to keep"
    paced = dataclasses.replace(cut, capacity=2.0, probes=[(1.0, True), (2.0, True), (4.0, False)], unit="x")
    assert paced.settled().reason == ("the deadline cut the capacity search after 3 probe(s): at least 2x the "
                                      "trace's pace")


class DeploymentRunner(StandInRunner):
    """Stands in for a running deployment: capacity 8 users, which fresh seeds miss; 4 holds."""

    fixed_deployment = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, float | None]] = []

    def run(self, point, stop, start_load=None, certify=False, label=""):
        assert point == {}, "a deployment has no knobs"
        self.calls.append((certify, start_load))
        if not certify:
            return Outcome(100.0, {"fits": 0.0, "ttft_p99": -0.1}, capacity=8,
                           probes=[(4.0, True), (8.0, True), (16.0, False), (12.0, False)], seconds=1.0)
        holds = start_load <= 4
        return Outcome(80.0, {"fits": 0.0, "ttft_p99": -0.05 if holds else 0.1}, capacity=start_load, seconds=1.0)


def test_a_deployment_whose_capacity_misses_with_fresh_seeds_is_certified_at_the_next_load_that_held():
    from tunekv.search.space import SearchSpace

    runner = DeploymentRunner()
    notes = []
    summary = Search(study(), cpu_task(), SearchSpace({}, {}), 60.0, False, runner,
                     lambda e: notes.append(e.data.get("message"))).run()
    assert runner.calls == [(False, None), (True, 8.0), (True, 4.0)]
    assert summary.best is not None and summary.best.fidelity == "certified" and summary.best.outcome is not None
    assert summary.best.outcome.capacity == 4.0 and summary.reason == "ladder finished"
    assert "fresh seeds missed the SLO at 8 users; certifying 4 users, the next lower load that held" in notes


class SlowRealRunner(StandInRunner):
    """Stands in for RealRunner: every config meets the SLO, in a run too long to certify."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def run(self, point, stop, start_load=None, certify=False, label=""):
        self.calls.append(certify)
        return Outcome(100.0 + len(self.calls), {"fits": 0.0, "ttft_p99": -0.1}, capacity=8,
                       probes=[(8.0, True)], seconds=10_000.0)


def test_each_round_of_the_ladder_says_a_config_has_no_time_to_certify_once():
    runner = SlowRealRunner()
    events = []
    summary = Search(study(), sim_task(), small_space(), 60.0, False, runner, events.append, patience=4).run()
    assert runner.calls and not any(runner.calls), "no certification fits: none may start"
    rounds = sum(1 for e in events if e.kind == "stage" and e.data["name"] == "real")
    assert rounds >= 2, "the ladder must run more than one round for a note to repeat"
    notes = [e.data["message"] for e in events if e.kind == "note" and "no time left to certify" in e.data["message"]]
    assert notes and len(notes) == len(set(notes)), notes
    assert not [e for e in events if e.kind == "stage" and e.data["name"] == "certify"], "a stage that runs nothing"
    assert summary.best is not None and summary.best.fidelity == "real"
