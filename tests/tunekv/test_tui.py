"""The TUI through Textual's pilot: each screen, the no-GPU path, inline errors, a short search
end to end on the simulator (trials appear, exports are written), stop, pins, resume and quit."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState
from textual.widgets import Button, DataTable, Input, ProgressBar, Select, Static

from tests.tunekv.helpers import http_pages
from tests.tunekv.tui_helpers import click_button, no_gpu, one_gpu, plain, run, shown, trial_rows, wait_until
from tunekv.engine import EngineConfig
from tunekv.engine.llm_engine import Occupancy
from tunekv.hardware.gpus import gpu_preset
from tunekv.predict.planner import plan_for_gpu
from tunekv.search.options import SearchOptions
from tunekv.serve.metrics import ServerMetrics
from tunekv.tui import charts, last_search
from tunekv.tui.app import TuneKVApp
from tunekv.tui.modals import HelpScreen, ResumeScreen
from tunekv.tui.panes.compare import ComparePane, parse_users
from tunekv.tui.panes.export import ExportPane
from tunekv.tui.panes.hardware import HardwarePane, memory_bar
from tunekv.tui.panes.plan import PlanPane
from tunekv.tui.panes.search import SearchPane
from tunekv.workload.metrics import SLO

SIZE = (120, 40)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """Each test its own TUNEKV_HOME: the last-search file must not leak between tests."""
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_app(tmp_path: Path, probe=no_gpu, **kwargs) -> TuneKVApp:
    kwargs.setdefault("offer_resume", False)
    return TuneKVApp(probe=probe, poll_interval=0, out=str(tmp_path / "out"), **kwargs)


async def plan_ready(pilot) -> PlanPane:
    # The pane and its children mount in separate frames (Lazy): wait for the result area itself.
    await wait_until(pilot, lambda: bool(pilot.app.query("#plan-result")), what="the Plan screen to mount")
    pane = pilot.app.query_one(PlanPane)
    await wait_until(pilot, lambda: pane.plan is not None or "fix the fields" in plain(
        pilot.app.query_one("#plan-result")), what="a plan")
    return pane


def type_into(app: TuneKVApp, selector: str, text: str) -> None:
    """Replace an Input's text as typing would. The Plan screen re-plans 0.15 s after the last
    change: callers wait for the plan or the error that follows."""
    app.query_one(selector, Input).value = text


# --- Hardware ---------------------------------------------------------------------------------
def test_no_gpu_says_why_and_offers_presets(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            hw = app.query_one(HardwarePane)
            await wait_until(pilot, lambda: hw.reading is not None, what="the NVML reading")
            why = plain(app.query_one("#no-gpu"))
            assert "No NVIDIA GPU" in why and "libnvidia-ml.so" in why
            pick = app.query_one("#preset-pick", Select)
            assert pick.display
            pick.value = "l4-24gb"
            plan = await plan_ready(pilot)
            await wait_until(pilot, lambda: plan.plan is not None and plan.plan.gpu == "l4-24gb", what="the l4 plan")
            assert app.query_one("#plan-gpu", Select).value == "l4-24gb"
            # A preset chosen on the Plan screen shows here too: both screens name one GPU.
            app.query_one("#plan-gpu", Select).value = "a100-80gb"
            await wait_until(pilot, lambda: pick.value == "a100-80gb", what="the picker to follow the Plan screen")
            assert plan.checked.inputs.gpu == "a100-80gb"
    run(go())


def test_gpu_reading_shows_memory_processes_and_refreshes(tmp_path):
    readings = iter([one_gpu(6.0)] + [one_gpu(12.0)] * 1000)

    async def go():
        app = TuneKVApp(probe=lambda: next(readings), poll_interval=0.05, out=str(tmp_path / "out"),
                        offer_resume=False)
        async with app.run_test(size=SIZE) as pilot:
            hw = app.query_one(HardwarePane)
            await wait_until(pilot, lambda: hw.reading is not None
                             and hw.reading.gpus[0].memory_used_bytes == 12 * 2**30, what="a second reading")
            text = plain(app.query_one("#gpus"))
            assert "NVIDIA H100 80GB HBM3" in text and "util 37%" in text and "4242" in text and "python3" in text
            assert "others 12.0" in text
            assert not app.query_one("#preset-pick").display
            await plan_ready(pilot)
            assert app.query_one("#plan-gpu", Select).value == "local"
    run(go())


def test_memory_bar_shows_a_plan_that_does_not_fit():
    bar = memory_bar(80 * 2**30, 70 * 2**30, 20 * 2**30, width=40)
    assert "plan needs 10.0 GiB more than is free" in bar.plain
    assert bar.plain.count("█") == 40   # others + what fits of the plan fill the bar


# --- Plan ------------------------------------------------------------------------------------
def test_plan_follows_inputs_and_matches_the_planner(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            pane = await plan_ready(pilot)
            app.query_one("#plan-block_size", Select).value = "32"
            type_into(app, "#plan-max_model_len", "8192")
            await wait_until(pilot, lambda: pane.plan is not None and pane.plan.block_size == 32
                             and pane.plan.max_model_len == 8192, what="the new plan")
            expected = plan_for_gpu(EngineConfig(model="qwen3-0.6b", block_size=32, max_model_len=8192),
                                    gpu_preset("h100-80gb"))
            assert pane.plan.num_kv_blocks == expected.num_kv_blocks
            text = plain(app.query_one("#plan-result"))
            assert f"{expected.num_kv_blocks:,} blocks of 32" in text and "contiguous" in text and "fits" in text
    run(go())


def test_two_plans_at_once_in_a_fresh_process_both_plan():
    """The first plans start before torch and transformers are loaded (the debounced inputs, the
    fleet, the search's last study): two threads importing transformers at once could get it
    half-initialized ("cannot import name 'AutoConfig'"). A fresh process, as the app starts."""
    code = """
import threading
from tunekv.tui.forms import PlanInputs
from tunekv.tui.panes.plan import compute_plan
errors = []
def plan(gpu):
    try:
        compute_plan(PlanInputs(gpu=gpu))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=plan, args=(gpu,)) for gpu in ("h100-80gb", "l4-24gb")]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(errors)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("field,value,message", [
    ("model", "llama-9", "unknown model"),
    ("model", "/no/such/model/dir", "does not exist"),
    ("workload", "missing.yaml", "does not exist"),
    ("model", "m" * 300, "File name too long"),
    ("workload", "w" * 300 + ".yaml", "File name too long"),
    ("workload", "chatt", "did you mean chat"),
    ("slo", "ttft_p99=fast", "positive duration"),
    ("max_model_len", "abc", "not a whole number"),
    ("max_model_len", "999999", "allows at most 40,960"),
    ("gpu_memory_utilization", "1.5", "between 0.05 and 1.0"),
    ("gpu_memory_utilization", "x", "not a number"),
])
def test_bad_input_is_shown_next_to_its_field(tmp_path, field, value, message):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            pane = await plan_ready(pilot)
            type_into(app, f"#plan-{field}", value)
            error = app.query_one(f"#plan-{field}-error", Static)
            await wait_until(pilot, lambda: message in plain(error), what=f"the {field} error")
            assert error.display and pane.plan is None
            assert app.query_one(f"#plan-{field}").has_class("-invalid")
            # The other fields stay clean, and fixing the field brings the plan back.
            assert all(not app.query_one(f"#plan-{f}-error", Static).display for f in ("dtype", "tp") if f != field)
            type_into(app, f"#plan-{field}", {"model": "qwen3-0.6b", "workload": "chat", "slo": "relaxed",
                                              "max_model_len": "", "gpu_memory_utilization": "0.9"}[field])
            await wait_until(pilot, lambda: pane.plan is not None, what="the plan after the fix")
            assert not error.display
    run(go())


def test_a_model_that_does_not_fit_says_why(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            pane = await plan_ready(pilot)
            app.query_one("#plan-gpu", Select).value = "l4-24gb"
            type_into(app, "#plan-model", "llama-3-70b")
            await wait_until(pilot, lambda: pane.plan is not None and pane.plan.model == "llama-3-70b", what="70b plan")
            text = plain(app.query_one("#plan-result"))
            assert "does not fit" in text and "weights" in text
    run(go())


def test_fp8_kv_and_quantized_weights_follow_into_the_plan(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            pane = await plan_ready(pilot)
            first = pane.plan
            assert first is not None and first.quantization is None
            app.query_one("#plan-kv_cache_dtype", Select).value = "fp8"
            await wait_until(pilot, lambda: pane.plan is not None and pane.plan.kv_cache_dtype != first.kv_cache_dtype,
                             what="the fp8 KV plan")
            fp8 = pane.plan
            assert fp8.kv_bytes_per_token * 2 == first.kv_bytes_per_token
            assert fp8.num_kv_blocks in (2 * first.num_kv_blocks, 2 * first.num_kv_blocks + 1)  # twice the tokens
            text = plain(app.query_one("#plan-result"))
            assert f"{fp8.num_kv_blocks * fp8.block_size:,} tokens ({fp8.kv_bytes_per_token:,} bytes a token" in text
            assert "weights:" not in text
            app.query_one("#plan-quantization", Select).value = "awq"
            await wait_until(pilot, lambda: pane.plan is not None and pane.plan.quantization == "awq", what="awq plan")
            awq = pane.plan
            assert awq.weights_bytes < fp8.weights_bytes and awq.free_for_kv_bytes > fp8.free_for_kv_bytes
            text = plain(app.query_one("#plan-result"))
            assert "weights (awq)" in text and f"weights: awq, {awq.bits_per_weight:g} bits a matmul weight" in text
    run(go())


# --- Plan: a fleet for a target load -----------------------------------------------------------
def fleet_fields(app: TuneKVApp, **values: str) -> None:
    for name, value in values.items():
        app.query_one(f"#fleet-{name}", Input).value = value


@pytest.mark.parametrize("fields,field,message", [
    ({"target": "fast"}, "target", "takes a number of req/s or users such as 40rps or 2000users, got 'fast'"),
    ({"target": "200users", "gpus": "h100-80gb,b200"}, "gpus", "unknown GPU preset 'b200'"),
    ({"target": "200users", "prices": "h100-80gb=-1"}, "prices",
     "the price of h100-80gb must be a number of USD per GPU-hour >= 0, got '-1'"),
    ({"target": "40rps", "budget": "12s"}, "budget", "too short for 4 GPUs: a simulated search needs at least 5s each; "
                                                     "give at least --budget 20s"),
])
def test_bad_fleet_input_is_shown_under_its_field_and_nothing_is_searched(tmp_path, fields, field, message):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            pane = await plan_ready(pilot)
            fleet_fields(app, **fields)
            app.set_focus(None)
            await pilot.press("f")
            error = app.query_one(f"#fleet-{field}-error", Static)
            await wait_until(pilot, lambda: error.display and not pane.fleet_running, what=f"the {field} error")
            assert message in plain(error) and "\n" not in plain(error).strip()
            assert app.query_one(f"#fleet-{field}").has_class("-invalid")
            assert "fix the fleet fields" in plain(app.query_one("#fleet-status"))
            assert pane.fleet is None and not (tmp_path / "out" / "fleet").exists()
            fleet_fields(app, **{field: "2000users" if field == "target" else ""})   # typing clears the error
            await wait_until(pilot, lambda: not error.display, what="the error to clear")
    run(go())


def test_fleet_for_a_target_load_runs_the_searches_and_shows_the_table(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            pane = await plan_ready(pilot)
            type_into(app, "#plan-model", "llama-3-8b")
            await wait_until(pilot, lambda: pane.plan is not None and pane.plan.model == "llama-3-8b", what="8b plan")
            fleet_fields(app, target="200users", gpus="h100-80gb,l40s-48gb", budget="16s")  # 8 s of search a GPU
            app.query_one("#fleet-start", Button).press()
            await wait_until(pilot, lambda: pane.fleet_running, what="the fleet plan to start")
            assert app.query_one("#fleet-start", Button).disabled
            status = app.query_one("#fleet-status", Static)
            await wait_until(pilot, lambda: "h100-80gb: llama-3-8b" in plain(status), what="the first search")
            app.set_focus(None)
            await pilot.press("f")   # ignored while one runs
            await wait_until(pilot, lambda: not pane.fleet_running, timeout=120, what="the fleet plan to end")
            assert pane.fleet is not None, plain(status)
            assert [g.gpu for g in sorted(pane.fleet.gpus, key=lambda g: g.gpu)] == ["h100-80gb", "l40s-48gb"]
            first = pane.fleet.gpus[0]
            assert first.fleet is not None, first.reason   # the cheapest; a loaded machine may leave the other empty
            table = plain(app.query_one("#fleet-table")) + plain(app.query_one("#fleet-notes"))
            assert "fleets for 200 users at peak: llama-3-8b" in table and "l40s-48gb" in table
            assert re.search(rf"{first.gpu} .* {first.fleet.replicas} x tp{first.fleet.tp} = {first.fleet.gpus} GPUs?, "
                             rf"\${first.fleet.cost_per_hour_usd:,.2f}/hour", table), table
            box = app.query_one("#plan-result-box")
            await pilot.pause(0.1)
            assert box.virtual_size.width <= box.size.width, "the fleet fits the pane: no cost off to the side"
            assert "replicas = ceil(target / capacity per replica)" in table
            assert not app.query_one("#plan-result").display
            out = tmp_path / "out" / "fleet"
            assert f"wrote cost_per_million.png, report.md to {out}" in plain(status)
            assert "| l40s-48gb | predicted |" in (out / "report.md").read_text()
            # A plan field changed: the memory plan comes back.
            app.query_one("#plan-block_size", Select).value = "32"
            await wait_until(pilot, lambda: pane.plan is not None and pane.plan.block_size == 32, what="the new plan")
            assert app.query_one("#plan-result").display and not app.query_one("#fleet-table").display
    run(go())


def test_x_stops_a_fleet_plan_with_the_gpus_searched_so_far(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            pane = await plan_ready(pilot)
            fleet_fields(app, target="40rps", gpus="h100-80gb,l40s-48gb", budget="10m")   # 5 min a GPU unless stopped
            app.set_focus(None)
            await pilot.press("f")
            status = app.query_one("#fleet-status", Static)
            await wait_until(pilot, lambda: "h100-80gb: qwen3-0.6b" in plain(status), what="the first search")
            await pilot.press("x")
            await wait_until(pilot, lambda: not pane.fleet_running, timeout=60, what="the plan to stop")
            assert pane.fleet is not None and pane.fleet.stopped, plain(status)
            assert [g.gpu for g in pane.fleet.gpus] == ["h100-80gb"] and pane.fleet.not_searched == ("l40s-48gb",)
            assert "the plan was stopped" in plain(status) and "not searched: l40s-48gb" in plain(status)
            assert "not searched: l40s-48gb" in plain(app.query_one("#fleet-notes"))
            assert "The plan was stopped" in (tmp_path / "out" / "fleet" / "report.md").read_text()
            assert not app.query_one(SearchPane).running, "x on the Plan screen stops the fleet, not a search"
    run(go())


def test_quitting_while_a_fleet_is_planned_does_not_wait_for_its_searches(tmp_path):
    """Quitting stops the plan: the exit does not wait for it, its thread ends soon after, and
    nothing is written for the plan the user left."""
    quit_at = 0.0

    async def go():
        nonlocal quit_at
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            pane = await plan_ready(pilot)
            fleet_fields(app, target="40rps", gpus="l40s-48gb", budget="20s")
            app.set_focus(None)
            await pilot.press("f")
            status = app.query_one("#fleet-status", Static)
            await wait_until(pilot, lambda: "l40s-48gb: qwen3-0.6b" in plain(status), what="the search to start")
            assert pane.fleet_running
            quit_at = time.monotonic()
            await pilot.press("q")
            await wait_until(pilot, lambda: not app.is_running, what="the exit")

    run(go())
    assert time.monotonic() - quit_at < 10, "the exit waited for the search"
    for thread in [t for t in threading.enumerate() if t.name == "tunekv-fleet"]:
        thread.join(30)
        assert not thread.is_alive(), "the plan's search went on after the app quit"
    assert not (tmp_path / "out" / "fleet" / "report.md").exists()


# --- Search ----------------------------------------------------------------------------------
def search_rows(app) -> int:
    return app.query_one("#trials", DataTable).row_count


async def start_search(pilot, budget: str) -> SearchPane:
    """Type a budget on the Search screen and press s, as a person would."""
    await pilot.press("3")
    app = pilot.app
    app.query_one("#search-budget", Input).value = budget
    app.set_focus(None)
    await pilot.press("s")
    pane = app.query_one(SearchPane)
    await wait_until(pilot, lambda: pane.search is not None, what="the search to start")
    return pane


def test_search_end_to_end_on_the_simulator_writes_exports(tmp_path, home):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            pane = app.query_one(SearchPane)
            app.query_one("#search-budget", Input).value = "40s"  # tp 1-8 are searched: some trials take seconds
            await pilot.click("#search-start")
            await wait_until(pilot, lambda: pane.running, what="the search to start")
            assert app.query_one("#search-start", Button).disabled
            await wait_until(pilot, lambda: search_rows(app) >= 1, what="a trial")
            await wait_until(pilot, lambda: not pane.running, timeout=120, what="the search to end")
            status = plain(app.query_one("#search-status"))
            assert "search ended" in status, status
            assert search_rows(app) == len(pane.rows) >= 1
            assert all(r.fidelity == "sim" for r in pane.rows)
            out = tmp_path / "out"
            for name in ("tunekv.yaml", "vllm.yaml", "sglang.yaml", "tgi.env", "report.md"):
                assert (out / name).is_file(), name
            # The Export screen previews the best config and writes it elsewhere on one key.
            await pilot.press("5")
            export = app.query_one(ExportPane)
            assert export.best is not None
            assert "max-num-seqs" in plain(app.query_one("#export-preview"))
            app.query_one("#export-format", Select).value = "tgi"
            await wait_until(pilot, lambda: "MAX_BATCH_TOTAL_TOKENS" in plain(app.query_one("#export-preview")),
                             what="the TGI preview")
            app.query_one("#export-out", Input).value = str(tmp_path / "elsewhere")
            app.set_focus(None)
            await pilot.press("w")
            await wait_until(pilot, lambda: "wrote" in plain(app.query_one("#export-status")), what="the write")
            assert (tmp_path / "elsewhere" / "vllm.yaml").read_text() == (out / "vllm.yaml").read_text()
            record = last_search.load()
            assert record is not None and record.state == "finished" and not record.resumable
    run(go())


def test_bad_budget_is_inline_and_nothing_starts(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            app.query_one("#search-budget", Input).value = "soon"
            await pilot.click("#search-start")
            error = app.query_one("#search-budget-error", Static)
            await wait_until(pilot, lambda: error.display, what="the budget error")
            assert "90s, 30m" in plain(error)
            assert not app.query_one(SearchPane).running
    run(go())


def test_stop_keeps_finished_trials_and_reopening_offers_resume(tmp_path, home):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            pane = await start_search(pilot, "10m")
            await wait_until(pilot, lambda: search_rows(app) >= 2, what="two trials")
            await pilot.press("x")
            await wait_until(pilot, lambda: not pane.running, what="the stop")
            study = pane.prepared.study
            assert "interrupted" in plain(app.query_one("#search-status"))
            trials = study.get_trials(deepcopy=False)
            assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2
            assert not [t for t in trials if t.state == TrialState.RUNNING]
            name = study.study_name
        record = last_search.load()
        assert record is not None and record.state == "interrupted" and record.study == name
        assert (home / "tui" / "last-search.json").stat().st_mode & 0o077 == 0

        reopened = make_app(tmp_path, offer_resume=True)
        async with reopened.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: isinstance(reopened.screen, ResumeScreen), what="the resume offer")
            assert name in plain(reopened.screen.query_one(Static))
            await pilot.press("y")
            pane = reopened.query_one(SearchPane)
            await wait_until(pilot, lambda: pane.prepared is not None, what="the resumed search")
            assert pane.prepared.name == name and len(pane.rows) >= len(trials) - 1
            await pilot.press("x")
            await wait_until(pilot, lambda: not pane.running, what="the stop")
    run(go())


def test_pins_apply_to_later_trials_and_release(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            pane = app.query_one(SearchPane)
            app.query_one("#pin-knob", Select).value = "block_size"
            app.query_one("#pin-value", Input).value = "32"
            await click_button(pilot, "#pin")
            assert "start a search first" in plain(app.query_one("#pin-note"))
            await start_search(pilot, "10m")
            app.query_one("#pin-value", Input).value = "7"
            await click_button(pilot, "#pin")
            assert "block_size" in plain(app.query_one("#pin-note")) and pane.pins == {}
            app.query_one("#pin-value", Input).value = "32"
            await click_button(pilot, "#pin")
            assert pane.pins == {"block_size": "32"} and pane.search.space.fixed["block_size"] == 32
            pinned_at = len(pane.rows)
            await wait_until(pilot, lambda: len(pane.rows) >= pinned_at + 3, timeout=120,
                             what="three trials after the pin")
            # The trial running when the pin landed may have started before it; every later one keeps it.
            assert all(r.point["block_size"] == 32 for r in pane.rows[pinned_at + 1:])
            await pilot.click("#release")
            assert pane.pins == {} and "block_size" not in pane.search.space.fixed
            await click_button(pilot, "#pin")
            assert "released when it ends" in plain(app.query_one("#pin-note"))
            await pilot.press("x")
            await wait_until(pilot, lambda: not pane.running, what="the stop")
            assert pane.pins == {} and "released with the search: block_size=32" in plain(app.query_one("#pin-note"))
    run(go())


def test_q_stops_a_running_search_then_quits(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            pane = await start_search(pilot, "10m")
            await wait_until(pilot, lambda: search_rows(app) >= 1, what="a trial")
            app.set_focus(None)
            await pilot.press("q")
            await wait_until(pilot, lambda: not app.is_running, what="the exit")
            study = pane.prepared.study
        # The app waited for the search to stop the way Ctrl-C stops `tunekv search`.
        record = last_search.load()
        assert record is not None and record.state == "interrupted"
        states = [t.state for t in study.get_trials(deepcopy=False)]
        assert TrialState.COMPLETE in states and TrialState.RUNNING not in states
    run(go())


def test_gauges_follow_the_running_trials_engine(tmp_path):
    """During a real trial the worker reads the runner's engine; between trials the gauges idle."""
    class Stats:
        used_blocks, num_blocks = 30, 120

    class Engine:
        def kv_stats(self):
            return Stats()

    class Runner:
        engine = None

    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            pane = app.query_one(SearchPane)
            runner = Runner()
            pane.running = True
            pane.gauge_worker(runner)
            note = app.query_one("#gauge-note", Static)
            await wait_until(pilot, lambda: "no real trial running" in plain(note), what="the idle gauges")
            runner.engine = Engine()
            await wait_until(pilot, lambda: "KV 30 / 120 blocks" in plain(note), what="the KV gauge")
            assert app.query_one("#kv-gauge").percentage == pytest.approx(0.25)
            pane.running = False
    run(go())


def test_a_running_endpoint_without_a_url_says_so_in_the_status(tmp_path):
    """The URL field shows only for "a running endpoint"; left empty, the search does not start and
    the status says why in one sentence."""
    async def go():
        app = make_app(tmp_path, probe=one_gpu)   # real trials: a GPU preset would only simulate
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            pane = app.query_one(SearchPane)
            url = app.query_one("#search-endpoint", Input)
            assert not url.display
            app.query_one("#search-server-kind", Select).value = "endpoint"
            await wait_until(pilot, lambda: shown(app, "#search-endpoint"), what="the URL field")
            await click_button(pilot, "#search-start")
            status = app.query_one("#search-status", Static)
            await wait_until(pilot, lambda: "cannot start" in plain(status), what="the error")
            assert plain(status).strip() == ("cannot start: --endpoint takes an http(s) URL such as "
                                             "http://127.0.0.1:8000, got ''")
            assert not pane.running and not app.query_one("#search-start", Button).disabled
            app.query_one("#search-server-kind", Select).value = "vllm"
            await wait_until(pilot, lambda: not url.display, what="the URL field to hide")
    run(go())


@pytest.mark.parametrize("choice, url, server, endpoint", [
    ("engine", "", None, None),
    ("tunekv", "", "tunekv", None),
    ("sglang", "http://ignored:1", "sglang", None),
    ("endpoint", " http://10.0.0.5:8000 ", None, "http://10.0.0.5:8000"),
])
def test_the_server_choice_goes_into_the_search_options(tmp_path, monkeypatch, choice, url, server, endpoint):
    started: list[SearchOptions] = []
    monkeypatch.setattr(SearchPane, "run_search", lambda self, options: started.append(options))

    async def go():
        app = make_app(tmp_path, probe=one_gpu)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            app.query_one("#search-server-kind", Select).value = choice
            app.query_one("#search-endpoint", Input).value = url
            await click_button(pilot, "#search-start")
            await wait_until(pilot, lambda: bool(started), what="the search to start")
    run(go())
    options = started[0]
    assert (options.server, options.endpoint) == (server, endpoint)
    assert options.model == "qwen3-0.6b" and options.gpu is None and options.budget == "5m"


def test_without_a_gpu_the_search_runs_on_this_cpu_with_the_cpus_defaults(tmp_path, monkeypatch):
    """Where there is no GPU the Search screen offers this CPU, as `tunekv search` runs there: the
    Plan screen's model and SLO still at the GPU's defaults take the CPU's, a field the user set is
    kept, and back on the preset the GPU's return."""
    started: list[SearchOptions] = []
    monkeypatch.setattr(SearchPane, "run_search", lambda self, options: started.append(options))

    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            plan = await plan_ready(pilot)
            type_into(app, "#plan-workload", "rag")
            await pilot.press("3")
            where = app.query_one("#search-where-kind", Select)
            target = app.query_one("#search-target")
            assert "simulating the h100-80gb preset" in plain(target)
            where.value = "cpu"
            await wait_until(pilot, lambda: plan.get_field("model") == "tiny-llama", what="the CPU's model")
            assert plan.get_field("slo") == "relaxed" and "real runs on this CPU" in plain(target)
            await wait_until(pilot, lambda: plan.checked.inputs.model == "tiny-llama", what="the plan to follow")
            await click_button(pilot, "#search-start")
            await wait_until(pilot, lambda: bool(started), what="the search to start")
            type_into(app, "#plan-slo", "batch")
            where.value = "plan"
            await wait_until(pilot, lambda: plan.get_field("model") == "qwen3-0.6b", what="the GPU's model")
            assert plan.get_field("slo") == "batch", "a field the user changed is kept"
            await wait_until(pilot, lambda: "simulating" in plain(target), what="the preset's description")
    run(go())
    options = started[0]
    assert options.gpu is None, "no GPU here: no preset means this CPU"
    assert (options.model, options.slo, options.workload) == ("tiny-llama", "relaxed", "rag")


@pytest.mark.parametrize("size, charts", [((80, 24), False), (SIZE, True)])
def test_the_trials_table_shows_each_result_in_80_columns(tmp_path, size, charts):
    """The result columns come before the knobs, so 80 columns show up to the SLO verdict; below
    about 30 rows the charts give their room to the table's rows."""
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=size) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            pane = app.query_one(SearchPane)
            rows = trial_rows()
            for row in rows:
                pane.add_row(row)
            await wait_until(pilot, lambda: shown(app, "#trials"), what="the Search screen")
            table = app.query_one("#trials", DataTable)
            columns = list(table.columns.values())
            labels = [c.label.plain for c in columns]
            through_slo = sum(c.get_render_width(table) for c in columns[:labels.index("SLO") + 1])
            assert through_slo <= table.size.width, (labels, table.size.width)
            assert app.query_one("#charts").display == charts
            assert table.size.height >= 1 + len(rows), "the header and every row fit"
    run(go())


def test_a_search_on_a_traces_pace_titles_its_capacity_column_pace(tmp_path):
    """The trial table's capacity column counts what the search counts: a trace's pace, in x."""
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            pane = app.query_one(SearchPane)
            table = app.query_one("#trials", DataTable)
            assert [c.label.plain for c in table.columns.values()][3] == "users"
            prepared = SimpleNamespace(task=SimpleNamespace(unit="x", gpu=None), runner=None, slo=SLO(500, 50),
                                       headline=lambda: "workload t (30 requests, replayed at its arrival times)")
            row = dataclasses.replace(trial_rows()[0], capacity=3.5, capacity_unit="x")
            pane.post_message(SearchPane.Started(None, prepared, [row]))
            await wait_until(pilot, lambda: table.row_count == 1, what="the study's finished trial")
            assert [c.label.plain for c in table.columns.values()][3] == "pace"
            assert str(table.get_row_at(0)[3]) == "3.5x"
    run(go())


def test_with_a_gpu_the_search_screen_offers_no_cpu(tmp_path):
    async def go():
        app = make_app(tmp_path, probe=one_gpu)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            await pilot.press("3")
            await wait_until(pilot, lambda: shown(app, "#search-server-kind"), what="the Search screen")
            assert not app.query("#search-where-kind")
            assert "on this machine's GPU" in plain(app.query_one("#search-target"))
    run(go())


def test_server_gauges_follow_the_running_trials_server(tmp_path):
    """With a server, the worker reads the running trial's /metrics (tunekv serve's own names, TGI's
    without a KV gauge); between trials it says none runs; a deployment is read throughout."""
    @dataclass
    class Server:
        url: str
        pid: int = 4242

    @dataclass
    class Target:
        url: str

    class Runner:
        current: Server | None = None
        target: Target | None = None

    metrics = ServerMetrics("tiny")
    metrics.observe_step(Occupancy(running=5, waiting=2, used_blocks=32, num_blocks=128), 0, 5)
    tgi = ("# TYPE tgi_queue_size gauge\ntgi_queue_size 4\n"
           "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 16\n")
    pages = {"/metrics": (200, metrics.render().decode())}

    async def go(root: str):
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: bool(app.query(SearchPane)), what="the Search screen")
            await pilot.press("3")
            pane = app.query_one(SearchPane)
            runner = Runner()
            pane.running = True
            pane.server_gauge_worker(runner, "tunekv serve")
            note = app.query_one("#gauge-note", Static)
            gauge = app.query_one("#kv-gauge", ProgressBar)
            await wait_until(pilot, lambda: "no tunekv serve running now" in plain(note), what="no server yet")
            runner.current = Server(root)
            await wait_until(pilot, lambda: "tunekv serve (pid 4242): KV cache 25% used   requests: 5 running, "
                             "2 waiting" in plain(note), what=lambda: f"the KV gauge, not {plain(note)!r}")
            assert gauge.percentage == pytest.approx(0.25)
            pages["/metrics"] = (200, tgi)
            await wait_until(pilot, lambda: "no KV cache gauge in its /metrics   requests: 16 running, 4 waiting"
                             in plain(note), what=lambda: f"TGI's gauges, not {plain(note)!r}")
            assert gauge.percentage == 0
            del pages["/metrics"]
            await wait_until(pilot, lambda: "no reading from its /metrics (HTTP 404)" in plain(note),
                             what=lambda: f"the reason, not {plain(note)!r}")
            runner.current = None
            await wait_until(pilot, lambda: "no tunekv serve running now" in plain(note), what="between trials")
            pages["/metrics"] = (200, metrics.render().decode())
            runner.target = Target(root + "/v1")
            await wait_until(pilot, lambda: f"tunekv serve at {root}: KV cache 25% used" in plain(note),
                             what=lambda: f"the deployment's gauges, not {plain(note)!r}")
            pane.running = False
    with http_pages(pages) as root:
        run(go(root))


# --- Compare, Export, help, themes ----------------------------------------------------------
def test_parse_users():
    assert parse_users("32, 1,8,8") == ([1, 8, 32], None)
    for bad in ("", "a,b", "0,4", "1,100000"):
        assert parse_users(bad)[0] is None


class PlotRecorder:
    """A plotext ``plt`` that keeps each line and scatter drawn, by label."""

    def __init__(self) -> None:
        self.drawn: dict[str, tuple[list, list]] = {}

    def plot(self, xs, ys, label=None, **_):
        self.drawn[label] = (list(xs), list(ys))

    scatter = plot

    def __getattr__(self, name):   # title, xlabel, clear_data, vline ...: nothing to keep
        return lambda *args, **kwargs: None


def test_the_charts_keep_each_fidelity_apart():
    """The headline's best is the highest fidelity's; a simulated trial that predicts more must not
    look like the best so far, so each fidelity has its own step line."""
    rows = trial_rows()   # sim best 3100, real 2950, certified 2880; one infeasible sim trial
    plt = PlotRecorder()
    charts.best_so_far(plt, rows)
    assert {k: ys[-1] for k, (_, ys) in plt.drawn.items()} == {"sim": 3100.0, "real": 2950.0, "certified": 2880.0}
    assert plt.drawn["sim"] == ([0, 1, 1, 2, 3, 3, 4, 5], [2100.0, 2100.0, 2600.0, 2600.0, 2600.0, 3100.0, 3100.0,
                                                           3100.0]), "steps, carried to the last trial"
    plt = PlotRecorder()
    charts.pareto(plt, rows, 500.0)
    assert list(plt.drawn) == ["front", "sim", "real", "certified"], "the front first, under the trials"


def test_compare_runs_four_schedulers_on_one_pool(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)
            await pilot.press("4")
            pane = app.query_one(ComparePane)
            app.query_one("#compare-users", Input).value = "x"
            await click_button(pilot, "#compare-run")
            assert "whole numbers" in plain(app.query_one("#compare-error"))
            app.query_one("#compare-users", Input).value = "1,16"
            await click_button(pilot, "#compare-run")
            status = app.query_one("#compare-status")
            await wait_until(pilot, lambda: not pane.running and len(pane.points) == 8, timeout=120,
                             what=lambda: f"eight runs ({len(pane.points)} so far, {plain(status)})")
            assert {p.variant for p in pane.points} == {"paged + continuous", "contiguous + continuous",
                                                        "paged + static", "contiguous + static"}
            assert app.query_one("#compare-table", DataTable).row_count == 8
            assert "at 16 users paged + continuous gives" in plain(app.query_one("#compare-status"))
            target = plain(app.query_one("#compare-target"))
            assert re.search(r"one KV pool of [\d,]+ tokens; max_model_len [\d,]+ \(the workload's longest request\)",
                             target), target
            app.query_one("#compare-users", Input).value = "1,16,64,256"
            await click_button(pilot, "#compare-run")
            await pilot.press("escape", "x")   # out of any field; on the Compare screen x stops the comparison
            await wait_until(pilot, lambda: not pane.running, timeout=120, what="the comparison to stop")
            assert "stopped after" in plain(status) and len(pane.points) < 16, plain(status)
    run(go())


def test_help_theme_and_palette(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            before = app.theme
            await pilot.press("t")
            assert app.theme != before and not app.current_theme.dark
            commands = [c.title for c in app.get_system_commands(app.screen)]
            assert {"Start search", "Stop search", "Write exports", "Show plan"} <= set(commands)
            for key, tab in (("2", "plan"), ("4", "compare"), ("5", "export"), ("1", "hardware")):
                app.set_focus(None)
                await pilot.press(key)
                assert app.query_one("#tabs").active == tab
            await pilot.press("5")
            await pilot.press("w")
            assert "nothing to write" in plain(app.query_one("#export-status"))
    run(go())


def test_number_keys_switch_screens_from_a_focused_field_and_esc_leaves_a_text_field(tmp_path):
    """A focused Select passes 1-5 on, and the screen switches (it used to spring back, with the
    focus in the Model field); an Input types them, and Esc hands the keys back."""
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            await plan_ready(pilot)
            app.set_focus(app.query_one("#plan-gpu"))
            await pilot.press("5")
            await wait_until(pilot, lambda: app.query_one("#tabs").active == "export", what="the Export screen")
            await pilot.pause(0.2)
            assert app.query_one("#tabs").active == "export", "the Plan screen came back"
            await pilot.press("2")
            model = app.query_one("#plan-model", Input)
            app.set_focus(model)
            before = model.value
            await pilot.press("end", "5")
            assert model.value == before + "5" and app.query_one("#tabs").active == "plan"
            await pilot.press("backspace", "escape", "3")
            await wait_until(pilot, lambda: app.query_one("#tabs").active == "search", what="the Search screen")
            assert model.value == before
    run(go())


def test_q_at_once_quits_before_every_screen_has_mounted(tmp_path):
    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("q")
            await wait_until(pilot, lambda: not app.is_running, what="the exit")
    run(go())


def test_an_unreadable_last_search_file_is_ignored(tmp_path, home):
    (home / "tui").mkdir(parents=True)
    (home / "tui" / "last-search.json").write_text("{not json")
    assert last_search.load() is None

    async def go():
        app = make_app(tmp_path, offer_resume=True)
        async with app.run_test(size=SIZE) as pilot:
            await plan_ready(pilot)   # the app is up: an offer to resume would be on screen by now
            assert not isinstance(app.screen, ResumeScreen)
    run(go())


def test_a_feasible_trial_refreshes_the_export_screens_best_so_far(tmp_path, monkeypatch):
    """While a search runs, each feasible trial makes the app read the study's best for Export;
    an infeasible one does not."""
    from tunekv.search.ladder import Event

    loads: list[object] = []
    monkeypatch.setattr(TuneKVApp, "load_best", lambda self, prepared: loads.append(prepared))
    feasible, infeasible = (next(r for r in trial_rows() if r.feasible is ok) for ok in (True, False))

    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: bool(app.query(SearchPane)), what="the Search screen")
            pane = app.query_one(SearchPane)
            pane.post_message(SearchPane.Progress(Event("trial", trial=infeasible)))
            pane.post_message(SearchPane.Progress(Event("trial", trial=feasible)))
            await wait_until(pilot, lambda: len(loads) == 1, what="the best so far to load")
            await pilot.pause()
            assert len(loads) == 1
    run(go())
