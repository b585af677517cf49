"""The Export screen: the best config of the search as tunekv, vLLM, SGLang and TGI configs,
previewed with syntax highlighting and written (with the report) on one key press."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Select, Static

from tunekv.tui.imports import import_heavy

if TYPE_CHECKING:
    import optuna

    from tunekv.export import Best

FORMAT_LABELS = (("tunekv (tunekv.yaml)", "tunekv"), ("vLLM (vllm.yaml)", "vllm"), ("SGLang (sglang.yaml)", "sglang"),
                 ("TGI (tgi.env)", "tgi"))
LEXERS = {"tunekv": "yaml", "vllm": "yaml", "sglang": "yaml", "tgi": "bash"}


class ExportPane(VerticalScroll):
    @dataclass
    class Written(Message):
        """The files the writer wrote, or why it could not."""

        paths: list[Path]
        error: str | None

    DEFAULT_CSS = """
    ExportPane #export-controls { height: 1; margin-top: 1; }
    ExportPane #export-format { width: 30; }
    ExportPane #export-out { width: 1fr; }
    ExportPane #export-out { margin-left: 1; }
    ExportPane #export-controls Button { margin-left: 1; }
    ExportPane #export-status { height: auto; margin: 0 0 1 0; }
    ExportPane #export-preview { height: auto; }
    """

    def __init__(self, out: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out = out
        self.best: Best | None = None
        self.study: optuna.Study | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="export-controls"):
            yield Select(FORMAT_LABELS, value="vllm", allow_blank=False, id="export-format", compact=True)
            yield Input(self.out, placeholder="output directory", id="export-out", compact=True)
            yield Button("Write all (w)", id="export-write", variant="primary", compact=True)
        yield Static("no search result yet: run a search (Search screen) and its best config shows here",
                     id="export-status")
        yield Static("", id="export-preview")

    def show_best(self, best: Best | None, study: optuna.Study | None, note: str = "") -> None:
        self.best, self.study = best, study
        if best is None:
            self.status(note or "no config met the SLO yet: nothing to export", "yellow")
        else:
            from tunekv.export import figures

            self.status(f"best of study {best.study}: trial {best.number} ({best.fidelity}); {figures(best)}"
                        + (f"\n{note}" if note else ""))
        self.preview()

    def status(self, text: str, style: str = "") -> None:
        self.query_one("#export-status", Static).update(Text(text, style=style))

    def preview(self) -> None:
        box = self.query_one("#export-preview", Static)
        if self.best is None:
            box.update("")
            return
        from tunekv.export import EXPORTERS

        fmt = str(self.query_one("#export-format", Select).value)
        # Line numbers: a long comment wrapped to the pane's width reads as one line of the file.
        box.update(Syntax(EXPORTERS[fmt](self.best), LEXERS[fmt], word_wrap=True, line_numbers=True,
                          theme="ansi_dark" if self.app.current_theme.dark else "ansi_light"))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.preview()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.write()

    def write(self) -> None:
        if self.best is None:
            self.status("nothing to write yet: no config met the SLO", "yellow")
            return
        out = self.query_one("#export-out", Input).value.strip()
        if not out:
            self.status("give an output directory", "red")
            return
        self.status(f"writing to {out} ...")
        self.write_worker(Path(out).expanduser(), self.best, self.study)

    @work(thread=True, exclusive=True, group="export")
    def write_worker(self, out: Path, best: Best, study: optuna.Study) -> None:
        import_heavy()
        from tunekv.search.session import write_exports

        try:
            if out.exists() and not out.is_dir():
                raise OSError(f"{out} is a file, not a directory")
            out.mkdir(parents=True, exist_ok=True)
            paths = write_exports(best, study, out)
        except OSError as exc:
            self.post_message(self.Written([], f"cannot write to {out}: {exc.strerror or exc}"))
            return
        except Exception as exc:  # e.g. the study's storage went away: said on the screen
            self.post_message(self.Written([], f"cannot write the exports: {type(exc).__name__}: {exc}"))
            return
        self.post_message(self.Written(paths, None))

    def on_export_pane_written(self, message: Written) -> None:
        if message.error:
            self.status(message.error, "red")
        else:
            self.status("wrote " + ", ".join(str(p) for p in message.paths), "green")
