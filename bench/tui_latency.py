"""How fast the TUI answers while a search runs, and how soon its first screen paints.

Key latency: the app runs headless under Textual's pilot at 120x40 with a simulated search on
the h100-80gb preset streaming trials (its thread holds the GIL most of the time); every 0.2 s
a tab key is pressed, and the time from the press to the tab action running is recorded. The
same presses with no search give the baseline, in the same run. First paint: a fresh Python
process from its start to the end of the first refresh of the first screen (imports included).

    python bench/tui_latency.py [--presses 60] [--budget 90s]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench._common import machine, write_result  # noqa: E402
from tunekv.hardware.probe import ProbeResult  # noqa: E402
from tunekv.tui.app import TuneKVApp  # noqa: E402
from tunekv.tui.panes.plan import PlanPane  # noqa: E402
from tunekv.tui.panes.search import SearchPane  # noqa: E402

KEYS = ("1", "2", "4", "5", "3")
TABS = {"1": "hardware", "2": "plan", "3": "search", "4": "compare", "5": "export"}
FIRST_PAINT = """
import time
from tunekv.tui.app import TuneKVApp


class Painted(TuneKVApp):
    def on_mount(self):
        super().on_mount()
        self.call_after_refresh(self.painted)   # runs once the first frame is on the screen

    def painted(self):
        print(time.time(), flush=True)
        self.exit()


Painted(offer_resume=False).run(headless=True, size=(120, 40))
"""

class TimedApp(TuneKVApp):
    """Records when each tab action runs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.handled: list[float] = []

    def action_show_tab(self, tab: str) -> None:
        self.handled.append(time.perf_counter())
        super().action_show_tab(tab)


async def presses(pilot, app: TimedApp, n: int, keep_going=lambda: True) -> list[float]:
    """Latency (ms) of ``n`` tab presses, 0.2 s apart."""
    out = []
    for i in range(n):
        if not keep_going():
            break
        app.set_focus(None)
        before = len(app.handled)
        start = time.perf_counter()
        await pilot.press(KEYS[i % len(KEYS)])
        while len(app.handled) == before:
            await asyncio.sleep(0.001)
        out.append((app.handled[before] - start) * 1e3)
        await pilot.pause(0.2)
    return out


async def measure(n: int, budget: str, out_dir: str) -> dict:
    app = TimedApp(probe=lambda: ProbeResult(False, "benchmark: no GPU"), poll_interval=1.0, out=out_dir,
                   offer_resume=False)
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.query(PlanPane) or app.query_one(PlanPane).plan is None:   # mounted after the first paint
            await pilot.pause(0.05)
        idle = await presses(pilot, app, n)
        pane = app.query_one(SearchPane)
        app.query_one("#search-budget").value = budget
        app.set_focus(None)
        await pilot.press("s")
        while len(pane.rows) < 2:        # trials are streaming: the search thread is busy
            await pilot.pause(0.05)
        rows_before = len(pane.rows)
        busy = await presses(pilot, app, n, keep_going=lambda: pane.running)
        trials = len(pane.rows) - rows_before
        pane.stop()
        while pane.running:
            await pilot.pause(0.05)
    return {"idle_ms": idle, "searching_ms": busy, "trials_during": trials}


def first_paint(runs: int) -> list[float]:
    """Seconds from process start to the first painted screen, ``runs`` fresh processes."""
    out = []
    env = {**os.environ, "TUNEKV_HOME": tempfile.mkdtemp(prefix="tunekv-bench-home-")}
    for _ in range(runs):
        start = time.time()
        done = subprocess.run([sys.executable, "-c", FIRST_PAINT], capture_output=True, text=True, env=env,
                              cwd=Path(__file__).resolve().parent.parent, timeout=120)
        stamp = [line for line in done.stdout.splitlines() if line.strip()]
        assert done.returncode == 0 and stamp, done.stderr[-2000:]
        out.append(float(stamp[-1].split()[-1]) - start)
    return out


def stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "median": statistics.median(values), "p90": ordered[int(0.9 * (len(values) - 1))],
            "max": ordered[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presses", type=int, default=60)
    parser.add_argument("--budget", default="90s", help="search budget (the presses stop when it ends)")
    parser.add_argument("--paint-runs", type=int, default=5)
    args = parser.parse_args()
    os.environ["TUNEKV_HOME"] = tempfile.mkdtemp(prefix="tunekv-bench-home-")
    with tempfile.TemporaryDirectory() as out:
        keys = asyncio.run(measure(args.presses, args.budget, out))
    paint = first_paint(args.paint_runs)
    idle, busy, paint_s = stats(keys["idle_ms"]), stats(keys["searching_ms"]), stats(paint)
    print(f"{'':28} {'n':>4} {'median':>9} {'p90':>9} {'max':>9}")
    for label, s, unit in (("key -> action, idle (ms)", idle, ""), ("key -> action, searching (ms)", busy, ""),
                           ("first paint (s)", paint_s, "")):
        print(f"{label:28} {s['n']:>4} {s['median']:>9.2f} {s['p90']:>9.2f} {s['max']:>9.2f}{unit}")
    print(f"trials finished during the searching presses: {keys['trials_during']}; "
          f"median ratio searching/idle {busy['median'] / idle['median']:.2f}")
    path = write_result("tui-latency-cpu", {"machine": machine(), "presses": args.presses, "budget": args.budget,
                                            "key_idle_ms": idle, "key_searching_ms": busy, "first_paint_s": paint_s,
                                            "trials_during": keys["trials_during"], "raw": {**keys, "paint_s": paint}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
