"""Snapshots of each TUI screen at 120x40 with fixed data (pytest-textual-snapshot). After a
deliberate change to a screen: `pytest tests/tunekv/test_tui_snapshots.py --snapshot-update`,
then look at the SVGs in __snapshots__ before committing them."""

from __future__ import annotations

import datetime

import pytest

from tests.tunekv.helpers import best
from tests.tunekv.tui_helpers import no_gpu, one_gpu, plain, shown, trial_rows, wait_until
from tunekv.measure.compare import ComparePoint
from tunekv.tui.app import TuneKVApp
from tunekv.tui.modals import HelpScreen
from tunekv.tui.panes.compare import ComparePane
from tunekv.tui.panes.export import ExportPane
from tunekv.tui.panes.hardware import HardwarePane
from tunekv.tui.panes.plan import PlanPane
from tunekv.tui.panes.search import SearchPane

SIZE = (120, 40)


class _FixedDate(datetime.date):
    @classmethod
    def today(cls):
        return cls(2026, 11, 27)


@pytest.fixture(autouse=True)
def fixed(monkeypatch, tmp_path):
    """Same date in the export headers, no resume offer from another test's home."""
    monkeypatch.setattr("tunekv.export.datetime.date", _FixedDate)
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path / "home"))


def app_with(probe=no_gpu) -> TuneKVApp:
    return TuneKVApp(probe=probe, poll_interval=0, out="tunekv-search", offer_resume=False)


async def settled(pilot) -> None:
    """The NVML reading and the first plan are in, and on a GPU the Hardware screen's memory bar
    shows the plan's share."""
    app = pilot.app
    hardware = app.query_one(HardwarePane)
    await wait_until(pilot, lambda: hardware.reading is not None, what="NVML")
    await wait_until(pilot, lambda: bool(app.query(PlanPane)) and app.query_one(PlanPane).plan is not None,
                     what="the plan")
    if app.have_local_gpu:
        await wait_until(pilot, lambda: hardware.planned_bytes is not None, what="the plan on the memory bar")


def test_hardware_with_a_gpu(snap_compare):
    assert snap_compare(app_with(one_gpu), terminal_size=SIZE, run_before=settled)


def test_hardware_without_a_gpu(snap_compare):
    assert snap_compare(app_with(), terminal_size=SIZE, run_before=settled)


def test_plan(snap_compare):
    async def run_before(pilot):
        await settled(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: shown(pilot.app, "#plan-result"), what="the Plan screen")

    assert snap_compare(app_with(), terminal_size=SIZE, run_before=run_before)


def test_search_with_trials(snap_compare):
    async def run_before(pilot):
        await settled(pilot)
        await pilot.press("3")
        pane = pilot.app.query_one(SearchPane)
        for row in trial_rows():
            pane.add_row(row)
        await wait_until(pilot, lambda: shown(pilot.app, "#trials"), what="the Search screen")

    assert snap_compare(app_with(), terminal_size=SIZE, run_before=run_before)


def test_compare_with_results(snap_compare):
    async def run_before(pilot):
        await settled(pilot)
        await pilot.press("4")
        pane = pilot.app.query_one(ComparePane)
        gains = {"paged + continuous": 1.0, "contiguous + continuous": 0.55, "paged + static": 0.7,
                 "contiguous + static": 0.4}
        for variant, gain in gains.items():
            for users in (1, 8, 32, 128):
                tok_s = gain * 110 * users ** 0.8
                point = ComparePoint(variant, users, tok_s, 80.0 * users ** 0.5, 12.0, 100, 0, 0,
                                     min(users, int(128 * gain)), False)
                pane.post_message(ComparePane.PointReady(point))
        pane.post_message(ComparePane.Done(None, False))
        status = pilot.app.query_one("#compare-status")
        await wait_until(pilot, lambda: "at 128 users" in plain(status), what="the comparison's summary")

    assert snap_compare(app_with(), terminal_size=SIZE, run_before=run_before)


def test_compare_with_servers(snap_compare):
    """Server URLs given: a series per server, and "-" where a server does not report its scheduler."""
    urls = ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1")

    async def run_before(pilot):
        await settled(pilot)
        await pilot.press("4")
        pane = pilot.app.query_one(ComparePane)
        pilot.app.query_one("#compare-users").value = "1,8,32"
        pilot.app.query_one("#compare-endpoints").value = ", ".join(u.removesuffix("/v1") for u in urls)
        pane.endpoints = list(urls)
        pane.reset_table()
        for url, gain in zip(urls, (1.0, 0.8)):
            for users in (1, 8, 32):
                point = ComparePoint(url, users, gain * 90 * users ** 0.8, 60.0 * users ** 0.5, 15.0, 9 * users, 0,
                                     None, None, False)
                pane.post_message(ComparePane.PointReady(point))
        pane.post_message(ComparePane.Done(None, False))
        status = pilot.app.query_one("#compare-status")
        await wait_until(pilot, lambda: "at 32 users" in plain(status), what="the comparison's summary")

    assert snap_compare(app_with(), terminal_size=SIZE, run_before=run_before)


def test_export_preview(snap_compare):
    async def run_before(pilot):
        await settled(pilot)
        await pilot.press("5")
        pilot.app.query_one(ExportPane).show_best(best(), None)
        await wait_until(pilot, lambda: shown(pilot.app, "#export-preview"), what="the export preview")

    assert snap_compare(app_with(), terminal_size=SIZE, run_before=run_before)


def test_help(snap_compare):
    async def run_before(pilot):
        await settled(pilot)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, HelpScreen) and shown(pilot.app, "MarkdownBlock"),
                         what="the help text")

    assert snap_compare(app_with(), terminal_size=SIZE, run_before=run_before)
