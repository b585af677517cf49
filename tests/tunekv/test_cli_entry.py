"""The `tunekv` program's entry (`tunekv.cli.run`): what happens before any command runs."""

from __future__ import annotations

import importlib.abc
import subprocess
import sys

import pytest

from tunekv.cli import run


class InterruptedImport(importlib.abc.MetaPathFinder):
    """Ctrl-C arriving while Python loads the command line (torch takes about a second)."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "tunekv.cli.main":
            raise KeyboardInterrupt
        return None


def test_ctrl_c_while_the_command_line_loads_is_one_line_and_exit_130(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "tunekv.cli.main", raising=False)
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport(), *sys.meta_path])
    with pytest.raises(SystemExit) as ended:
        run()
    assert ended.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_the_exit_code_is_mains(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["tunekv", "search", "--budget", "soon"])
    with pytest.raises(SystemExit) as ended:
        run()
    assert ended.value.code == 2
    assert "--budget" in capsys.readouterr().err


HEAVY = ("torch", "transformers")
LOADED = ("import sys; from tunekv.cli.main import main; code = main(sys.argv[1:]); "
          f"print(code, [m for m in {HEAVY!r} if m in sys.modules])")


@pytest.mark.parametrize("args", [
    ("bench", "--slo", "ttft_p99=infms"),
    ("bench", "--model", "tiny-llama", "--block-size", "0"),
    ("bench", "--model", "llama-9b"),
    ("bench", "--model", "tiny-llama", "--compare", "kv_policy=paged"),
    ("serve", "--port", "70000"),
    ("plan", "--tp", "3"),
    ("plan", "--workload", "nope"),
    ("plan", "--target-load", "40rps", "--gpus", "b200"),
    ("calibrate", "--device", "tpu"),
    ("search", "--budget", "soon"),
    ("search", "--gpu", "h100-80gb", "--workload", "nope"),
    ("search", "--fix", "block_size=16", "--startup-timeout", "5m"),
    ("search", "--endpoint", "ftp://host"),
    ("search", "--server-cmd", "no-such-server-program --port {port}"),
    ("search", "--server-cmd", "serve --port {port} --n {nope}"),
    ("search", "--health", "/ready"),
    ("search", "--quantization", "awq"),
    ("export", "--study", "x", "--format", "vllm", "--target-load", "4rps"),
], ids=" ".join)
def test_bad_input_is_refused_before_torch_loads(args):
    """A typo is answered at once: torch and transformers take 3 to 6 seconds to import, so the
    commands check their arguments before anything imports them (a search's flags that
    need the model, such as --fix against its length, are checked once it is loaded)."""
    done = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "2 []", (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
