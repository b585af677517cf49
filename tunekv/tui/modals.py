"""Modal screens: the help text, and the offer to resume the last search."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Markdown, Static

HELP = """\
# tunekv

Find the serving settings (block size, batch limits, max model length, memory fraction, chunked
prefill, prefix caching, KV policy) that give the most throughput on your GPU while p99 TTFT and
p99 inter-token latency stay within your targets.

1. **Hardware** (`1`): your GPUs through NVML. With no GPU, pick a preset to plan against.
2. **Plan** (`2`): model, GPU, weights (quantization), KV cache dtype, workload, SLO and engine
   limits; the memory plan and how many sequences fit, paged and contiguous, update as you type. A
   field that is wrong says why in red. Below them, give a target load (`2000users`, `40rps`) and
   press **Plan fleet** (`f`): a short simulated search per GPU preset, then per GPU the replicas,
   GPUs, headroom, cost and what binds, as `tunekv plan --target-load` prints them. `x` stops it
   with the GPUs searched so far.
3. **Search** (`3`): give a budget and press **Start** (`s`). Simulated trials rank configs, real
   runs on this machine confirm the best, the top ones are certified with fresh seeds. With no GPU,
   choose this CPU (a demonstration with real runs) instead of simulating the Plan screen's preset. **Stop**
   (`x`) keeps every finished trial. Pin a knob to a value while it runs; release it again.
4. **Compare** (`4`): paged vs contiguous KV and continuous vs static batching on one KV pool; or
   give server URLs (comma-separated) to load those over HTTP with the same workload.
5. **Export** (`5`): the best config for tunekv, vLLM, SGLang and TGI; `w` writes them all.

| key | does |
|---|---|
| `1`-`5` | switch screen (in a text field they type: `esc` leaves the field first) |
| `s` / `x` | start / stop the search |
| `r` | run the comparison (`x` on the Compare screen stops it) |
| `f` | plan the fleet for the target load (`x` on the Plan screen stops it) |
| `w` | write the exports |
| `t` | dark / light theme |
| `ctrl+p` | command palette |
| `?` | this help |
| `q`, `ctrl+c` | quit (a running search stops first; `q` again quits at once) |

The same search runs headless: `tunekv search --budget 30m`; a study started here resumes there.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; max-width: 100; height: 90%; border: round $accent;
                                   background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)


class ResumeScreen(ModalScreen[bool]):
    """'Resume study X?' -> True (resume), False (start fresh)."""

    BINDINGS = [Binding("escape,n", "answer(False)", "new"), Binding("y,enter", "answer(True)", "resume")]
    DEFAULT_CSS = """
    ResumeScreen { align: center middle; }
    ResumeScreen > Vertical { width: 72; height: auto; border: round $accent; background: $surface; padding: 1 2; }
    ResumeScreen Horizontal { height: auto; margin-top: 1; }
    ResumeScreen Button { margin-right: 2; }
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.text)
            with Horizontal():
                yield Button("Resume (y)", id="resume", variant="success")
                yield Button("New search (n)", id="new")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "resume")

    def action_answer(self, resume: bool) -> None:
        self.dismiss(resume)
