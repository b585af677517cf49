"""The Compare screen against servers over HTTP: a real `tunekv serve` swept over users through
Textual's pilot (a series per URL, stoppable), and the one-line reasons when a URL is wrong or
nothing answers there."""

from __future__ import annotations

import socket

import pytest
from textual.widgets import DataTable, Input

from tests.tunekv.serve_process import ServeProcess, metrics
from tests.tunekv.tui_helpers import click_button, no_gpu, plain, run, wait_until
from tunekv.tui.app import TuneKVApp
from tunekv.tui.forms import PlanInputs
from tunekv.tui.panes.compare import ComparePane, parse_endpoints
from tunekv.tui.panes.plan import PlanPane

SIZE = (120, 40)
SERVER = ("--model", "tiny-llama", "--max-model-len", "512", "--num-kv-blocks", "256")
TINY = """description: tiny
num_requests: 8
prompt_len: {dist: uniform, min: 8, max: 24}
output_len: {dist: uniform, min: 4, max: 12}
"""
# Minutes of decoding at one user: a run that only Stop ends in time.
LONG = """description: long
num_requests: 200
prompt_len: {dist: fixed, value: 16}
output_len: {dist: fixed, value: 400}
"""
GENERATED = "tunekv:generation_tokens_total"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path / "home"))


def make_app(tmp_path, workload: str = "chat") -> TuneKVApp:
    return TuneKVApp(probe=no_gpu, poll_interval=0, out=str(tmp_path / "out"), offer_resume=False,
                     inputs=PlanInputs(model="tiny-llama", gpu="h100-80gb", workload=workload))


async def compare_screen(pilot) -> ComparePane:
    """The plan is in (the comparison needs it) and the Compare screen is up."""
    app = pilot.app
    await wait_until(pilot, lambda: bool(app.query(PlanPane)) and app.query_one(PlanPane).plan is not None,
                     what="the plan")
    await pilot.press("4")
    await wait_until(pilot, lambda: bool(app.query("#compare-endpoints")), what="the Compare screen")
    return app.query_one(ComparePane)


def test_parse_endpoints():
    assert parse_endpoints("") == ([], None)
    assert parse_endpoints(" http://a:8000, http://a:8000/v1/ ,http://b:8001") == (["http://a:8000",
                                                                                      "http://b:8001"], None)
    for bad in ("a:8000", "ftp://a", "http://"):
        urls, error = parse_endpoints(f"http://a:8000, {bad}")
        assert urls is None and error is not None and "http(s) URLs" in error


def test_compare_sweeps_a_server_over_users_and_stops(tmp_path):
    tiny, long = tmp_path / "tiny.yaml", tmp_path / "long.yaml"
    tiny.write_text(TINY)
    long.write_text(LONG)
    with ServeProcess(*SERVER) as server:
        async def go():
            app = make_app(tmp_path, str(tiny))
            async with app.run_test(size=SIZE) as pilot:
                pane = await compare_screen(pilot)
                app.query_one("#compare-users", Input).value = "2,1"
                app.query_one("#compare-endpoints", Input).value = server.url
                await wait_until(pilot, lambda: "over HTTP" in plain(app.query_one("#compare-target")),
                                 what="the target line to name the servers")
                await click_button(pilot, "#compare-run")
                status = app.query_one("#compare-status")
                await wait_until(pilot, lambda: not pane.running, timeout=180,
                                 what=lambda: f"the comparison ({len(pane.points)} runs, {plain(status)})")
                url = server.url + "/v1"
                assert [(p.variant, p.users) for p in pane.points] == [(url, 1), (url, 2)], plain(status)
                for p in pane.points:
                    assert p.completed == 9 * p.users and p.failed == 0   # 10 requests a user, a tenth warm-up
                    assert p.output_throughput_tok_s > 0 and p.ttft_p99_ms > 0 and not p.cut
                    assert p.preemptions is None and p.peak_running_seqs is None   # a server does not say
                table = app.query_one("#compare-table", DataTable)
                assert table.row_count == 2
                assert [c.label.plain for c in table.columns.values()][0] == "server"
                assert list(table.get_row_at(0))[-2:] == ["-", "-"]
                assert plain(status).startswith(f"at 2 users {url} gives")

                # Stop ends a run that would take minutes, and no partial point is kept.
                app.query_one("#compare-users", Input).value = "1"
                app.query_one("#compare-endpoints", Input).value = server.url
                app.query_one("#plan-workload", Input).value = str(long)
                plan = app.query_one(PlanPane)
                await wait_until(pilot, lambda: plan.checked.inputs.workload == str(long) and plan.plan is not None,
                                 what="the plan with the long workload")
                before = metrics(server.url)[GENERATED]
                await click_button(pilot, "#compare-run")
                await wait_until(pilot, lambda: metrics(server.url)[GENERATED] > before + 20, timeout=120,
                                 what="the server to decode the new run's tokens")
                await click_button(pilot, "#compare-stop")
                await wait_until(pilot, lambda: not pane.running, timeout=30, what="the stop")
                assert pane.points == [] and app.query_one("#compare-table", DataTable).row_count == 0
                assert "stopped after 0 runs" in plain(status)
        run(go())
        assert server.proc is not None and server.proc.poll() is None, "the server outlives the client's stop"


def test_a_bad_url_or_no_server_says_why_in_one_line(tmp_path):
    with socket.socket() as s:   # a port nothing listens on: bound, never listened, closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go():
        app = make_app(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            pane = await compare_screen(pilot)
            app.query_one("#compare-users", Input).value = "1"
            app.query_one("#compare-endpoints", Input).value = "127.0.0.1:8000"
            await click_button(pilot, "#compare-run")
            error = app.query_one("#compare-error")
            assert error.display and not pane.running
            assert plain(error).strip() == ("server URLs are http(s) URLs such as http://127.0.0.1:8000, got "
                                            "'127.0.0.1:8000'")

            app.query_one("#compare-endpoints", Input).value = f"http://127.0.0.1:{port}"
            await click_button(pilot, "#compare-run")
            status = app.query_one("#compare-status")
            await wait_until(pilot, lambda: not pane.running and "cannot compare" in plain(status), timeout=60,
                             what=lambda: f"the reason ({plain(status)})")
            text = plain(status).strip()
            assert text.startswith(f"cannot compare: nothing answers at http://127.0.0.1:{port}/v1 (")
            assert len(text.splitlines()) == 1 and not error.display and pane.points == []
            assert not app.query_one("#compare-run").disabled and app.query_one("#compare-stop").disabled
    run(go())
