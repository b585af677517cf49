"""The Compare screen: paged vs contiguous KV and continuous vs static batching on one KV pool,
swept over users, as a chart of throughput vs users (``tunekv.measure.compare``, in a thread worker).
Given server URLs, it sweeps those instead: the same workload over HTTP, one series per server."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Static
from textual_plotext import PlotextPlot

from tunekv.errors import BadInput
from tunekv.tui import charts
from tunekv.tui.imports import import_heavy

if TYPE_CHECKING:
    from tunekv.engine.config import EngineConfig
    from tunekv.measure.compare import ComparePoint, ComparePool
    from tunekv.workload.workloads import Workload

DEFAULT_USERS = "1,8,32,128"
MAX_USERS = 4096
ENGINE_INTRO = ("what paging and continuous batching buy: four schedulers, one KV pool, the Plan screen's model and "
                "workload; or give server URLs to load those instead; press Run (or r)")


def parse_users(raw: str) -> tuple[list[int] | None, str | None]:
    """``1,8,32`` -> [1, 8, 32] (sorted, distinct), or why not."""
    try:
        users = sorted({int(part) for part in raw.split(",") if part.strip()})
    except ValueError:
        return None, f"users must be whole numbers separated by commas, like {DEFAULT_USERS}"
    if not users:
        return None, f"give at least one user count, like {DEFAULT_USERS}"
    if users[0] < 1 or users[-1] > MAX_USERS:
        return None, f"user counts must be between 1 and {MAX_USERS}"
    return users, None


def parse_endpoints(raw: str) -> tuple[list[str] | None, str | None]:
    """``http://a:8000, http://b:8000`` -> the URLs as given (distinct servers, in order; [] for
    none: the engine's schedulers run), or why not."""
    from tunekv.errors import shorten
    from tunekv.measure.endpoint import api_base

    urls: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            base, _ = api_base(part)
        except BadInput:
            return None, f"server URLs are http(s) URLs such as http://127.0.0.1:8000, got {shorten(part.strip())!r}"
        urls.setdefault(base, part.strip())
    return list(urls.values()), None


@dataclass(frozen=True)
class CompareJob:
    """What the Compare screen runs: the Plan screen's config and workload, on this device or
    simulated on a GPU preset (against servers: the workload, and the model for its prompts)."""

    config: EngineConfig
    workload: Workload
    simulate_gpu: str | None


class ComparePane(VerticalScroll):
    @dataclass
    class PointReady(Message):
        """One scheduler (or server) at one user count is measured (the worker posts it to its pane)."""

        point: ComparePoint

    @dataclass
    class PoolReady(Message):
        """The comparison's one KV pool is built: its size and the length a sequence reserves."""

        pool: ComparePool

    @dataclass
    class Done(Message):
        """The comparison ended: why it could not run, or whether it was stopped."""

        error: str | None
        stopped: bool

    DEFAULT_CSS = """
    ComparePane #compare-controls { height: 1; margin-top: 1; }
    ComparePane #compare-users { width: 22; }
    ComparePane #compare-controls Button { margin-left: 1; min-width: 9; }
    ComparePane #compare-target { padding-left: 2; width: 1fr; }
    ComparePane #compare-endpoints-row { height: 1; }
    ComparePane #compare-endpoints { width: 1fr; }
    ComparePane #compare-error { color: $error; height: auto; }
    ComparePane #compare-chart { height: 16; }
    ComparePane #compare-table { height: auto; max-height: 18; }
    """

    def __init__(self, make_job: Callable[[bool], CompareJob | str], describe_target: Callable[[], str],
                 **kwargs: Any) -> None:
        """``make_job(endpoints)``: what to compare, from the Plan screen (``endpoints``: against
        servers, which need only its workload and model), or the sentence that says what is wrong."""
        super().__init__(**kwargs)
        self.make_job, self.describe_target = make_job, describe_target
        self.points: list[ComparePoint] = []
        self.endpoints: list[str] = []     # the servers of the last run started; [] for the engine's schedulers
        self.running = False
        self._stop = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="compare-controls"):
            yield Input(DEFAULT_USERS, placeholder="users, e.g. 1,8,32,128", id="compare-users", compact=True)
            yield Button("Run", id="compare-run", variant="success", compact=True)
            yield Button("Stop", id="compare-stop", variant="error", disabled=True, compact=True)
            yield Static("", id="compare-target")
        with Horizontal(id="compare-endpoints-row"):
            yield Input("", placeholder="or server URLs to load instead, comma-separated, e.g. "
                        "http://127.0.0.1:8000, http://127.0.0.1:8001", id="compare-endpoints", compact=True)
        yield Static("", id="compare-error")
        yield Static(ENGINE_INTRO, id="compare-status")
        yield PlotextPlot(id="compare-chart")
        yield DataTable(id="compare-table", zebra_stripes=True)

    def on_mount(self) -> None:
        self.reset_table()
        self.query_one("#compare-error").display = False
        self.refresh_target()
        self.redraw()

    def reset_table(self) -> None:
        """Empty, with a first column that names what the rows are: variants or servers."""
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        for col in ("server" if self.endpoints else "variant", "users", "output tok/s", "p99 TTFT ms", "p99 ITL ms",
                    "peak running", "preemptions"):
            table.add_column(col)

    def refresh_target(self) -> None:
        if self.query_one("#compare-endpoints", Input).value.strip():
            text = "against the servers over HTTP: measured, the Plan screen's workload"
        else:
            text = self.describe_target()
        self.query_one("#compare-target", Static).update(Text(text, style="dim"))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "compare-endpoints":
            self.refresh_target()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "compare-run":
            self.run()
        elif event.button.id == "compare-stop":
            self.stop()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.run()

    def run(self) -> None:
        if self.running:
            return
        users, error = parse_users(self.query_one("#compare-users", Input).value)
        urls: list[str] | None = []
        if error is None:
            urls, error = parse_endpoints(self.query_one("#compare-endpoints", Input).value)
        box = self.query_one("#compare-error", Static)
        job = self.make_job(bool(urls)) if error is None else None
        if isinstance(job, str):
            error = job
        if error is not None or users is None or urls is None or job is None:
            box.update(error or "")
            box.display = True
            return
        box.display = False
        self.points, self.endpoints = [], urls
        self.reset_table()
        self.redraw()
        self.running, self._stop = True, False
        self.query_one("#compare-run", Button).disabled = True
        self.query_one("#compare-stop", Button).disabled = False
        if urls:
            self.status(f"reaching {len(urls)} server{'s' if len(urls) > 1 else ''}, then {len(users)} user counts "
                        "each ...")
        else:
            self.status(f"running 4 schedulers x {len(users)} user counts ...")
        self.compare_worker(job, users, urls)

    def on_unmount(self) -> None:
        self._stop = True

    def stop(self) -> None:
        self._stop = True
        self.status("stopping ...", "yellow")

    def status(self, text: str, style: str = "") -> None:
        self.query_one("#compare-status", Static).update(Text(text, style=style))

    def pool_ready(self, pool: ComparePool) -> None:
        """From the worker thread: the comparison's KV pool is built."""
        self.post_message(self.PoolReady(pool))

    def point_ready(self, point: ComparePoint) -> None:
        """From the worker thread: one scheduler (or server) at one user count is done."""
        self.post_message(self.PointReady(point))

    @work(thread=True, exclusive=True, group="compare")
    def compare_worker(self, job: CompareJob, users: list[int], urls: list[str]) -> None:
        import_heavy()
        from tunekv.engine.errors import ConfigError
        from tunekv.errors import RunFailure
        from tunekv.measure.compare import compare_endpoints, open_endpoints, run_compare

        try:
            if urls:
                endpoints = open_endpoints(urls, job.config.model, os.environ.get("OPENAI_API_KEY") or None)
                compare_endpoints(endpoints, job.workload, users, on_point=self.point_ready, stop=lambda: self._stop)
            else:
                run_compare(job.config, job.workload, users, simulate_gpu=job.simulate_gpu,
                            on_point=self.point_ready, on_pool=self.pool_ready, stop=lambda: self._stop)
        except (BadInput, ConfigError, RunFailure) as exc:   # a config rejected, a server not there or failing
            self.post_message(self.Done(str(exc), self._stop))
            return
        except Exception as exc:  # any other failure is reported on the screen, never a crashed app
            self.post_message(self.Done(f"{type(exc).__name__}: {exc}", self._stop))
            return
        self.post_message(self.Done(None, self._stop))

    def on_compare_pane_pool_ready(self, message: PoolReady) -> None:
        text = f"{self.describe_target()}; {message.pool.describe()}"
        self.query_one("#compare-target", Static).update(Text(text, style="dim"))

    def on_compare_pane_point_ready(self, message: PointReady) -> None:
        p = message.point
        if p.cut:
            return
        self.points.append(p)
        self.query_one("#compare-table", DataTable).add_row(
            p.variant, str(p.users), f"{p.output_throughput_tok_s:,.0f}", f"{p.ttft_p99_ms:,.0f}",
            f"{p.itl_p99_ms:,.1f}", _known(p.peak_running_seqs), _known(p.preemptions))
        self.redraw()

    def on_compare_pane_done(self, message: Done) -> None:
        self.running = False
        self.query_one("#compare-run", Button).disabled = False
        self.query_one("#compare-stop", Button).disabled = True
        if message.error:
            self.status(f"cannot compare: {message.error}", "red")
        elif message.stopped:
            self.status(f"stopped after {len(self.points)} runs", "yellow")
        else:
            self.status(self.summary(), "green")

    def summary(self) -> str:
        """At the highest user count: paged + continuous against each baseline (or the servers
        against the fastest)."""
        if not self.points:
            return "no runs finished"
        if self.endpoints:
            return self.endpoint_summary()
        top = max(p.users for p in self.points)
        at = {p.variant: p.output_throughput_tok_s for p in self.points if p.users == top}
        ours = at.get("paged + continuous")
        if not ours:
            return "done"
        gains = ", ".join(f"{ours / v:.2f}x {name}" for name, v in at.items() if name != "paged + continuous" and v)
        text = f"at {top} users paged + continuous gives {ours:,.0f} tok/s: {gains}"
        contiguous = at.get("contiguous + continuous")
        if contiguous and ours < 1.05 * contiguous:
            text += (" (paging barely matters here: the KV pool holds every sequence even when reserved at full "
                     "length; it shows on a smaller GPU, a larger model or more users)")
        return text

    def endpoint_summary(self) -> str:
        """At the highest user count a server reached: the fastest, and each other as a share of it."""
        top = max(p.users for p in self.points)
        at = {p.variant: p.output_throughput_tok_s for p in self.points if p.users == top}
        best = max(at, key=lambda url: at[url])
        text = f"at {top} users {best} gives {at[best]:,.0f} tok/s"
        others = ", ".join(f"{url} {v / at[best]:.2f}x that" for url, v in at.items() if url != best and at[best])
        if others:
            text += f"; {others}"
        failed = sum(p.failed for p in self.points)
        if failed:
            text += f" ({failed} requests failed and are not counted)"
        return text

    def redraw(self) -> None:
        plot = self.query_one("#compare-chart", PlotextPlot)
        title = "output tok/s vs users (same workload, over HTTP)" if self.endpoints else None
        charts.compare_lines(plot.plt, self.points, title)
        plot.refresh()


def _known(count: int | None) -> str:
    """A count, or "-" where nobody measured it (a server does not report its scheduler)."""
    return "-" if count is None else str(count)
