"""The `tunekv` program's entry (`tunekv.cli.run`): what happens before any command runs."""

from __future__ import annotations

import importlib.abc
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
