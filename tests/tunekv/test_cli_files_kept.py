"""Finished work is never lost: a bench result whose file cannot be written at the end is saved
elsewhere and said where (exit 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

BENCH = ["bench", "--simulate", "--gpu", "h100-80gb", "--model", "qwen3-0.6b", "--num-requests", "8",
         "--concurrency", "2"]


def lose(target: Path, how: str) -> None:
    """What happens to ``target`` (a result file's path) while the run goes on."""
    if how == "folder becomes a file":
        shutil.rmtree(target.parent)
        target.parent.write_text("not a folder any more\n")
    else:  # the file's name is taken by a folder
        target.mkdir()


def bench_losing(tmp_path: Path, monkeypatch, how: str, cwd: str, home: str) -> tuple[int, Path]:
    """`tunekv bench --json results/r.json` run in ``cwd``, the result's path lost as ``how`` says
    once the run has finished: the exit code and the path."""
    from tunekv.cli import bench
    from tunekv.cli.main import main

    target = tmp_path / "results" / "r.json"
    target.parent.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / cwd)
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path / home))
    run_bench = bench.run_bench

    def run_then_lose_the_path(*args, **kwargs):
        result = run_bench(*args, **kwargs)
        lose(target, how)
        return result

    monkeypatch.setattr(bench, "run_bench", run_then_lose_the_path)
    return main([*BENCH, "--json", str(target)]), target


@pytest.mark.parametrize("how, cwd, saved_under", [
    ("folder becomes a file", "cwd", "cwd"),              # not next to it: in the current folder
    ("name becomes a folder", "cwd", "results"),          # next to it
    ("folder becomes a file", "/proc", "home/results"),   # nor here: under TUNEKV_HOME
])
def test_a_bench_result_that_cannot_be_written_at_the_end_is_saved_elsewhere(tmp_path, monkeypatch, capsys, how,
                                                                             cwd, saved_under):
    code, target = bench_losing(tmp_path, monkeypatch, how, cwd, "home")
    out, err = capsys.readouterr()
    assert code == 1, err
    [saved] = (tmp_path / saved_under).glob("tunekv-bench-*.json")
    result = json.loads(saved.read_text())
    assert result["metrics"]["completed"] >= 1 and result["config"]["model"] == "qwen3-0.6b"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "details:" not in err, err
    assert f"could not write {target}" in lines[0] and f"the result is saved in {saved}" in lines[0], err
    assert "Benchmark Result" in out, "the result was shown before the file failed"


def test_a_bench_result_that_can_be_saved_nowhere_is_printed(tmp_path, monkeypatch, capsys):
    # The home lies in the folder that becomes a file, and the current folder is /proc.
    code, target = bench_losing(tmp_path, monkeypatch, "folder becomes a file", "/proc", "results/home")
    out, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and "standard output" in err, err
    result = json.loads(out[out.index("\n{") + 1:])
    assert result["metrics"]["completed"] >= 1
