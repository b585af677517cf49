"""Finished work is never lost: a bench result whose file cannot be written at the end is saved
elsewhere and said where (exit 1); a search whose exports cannot be written prints its summary
and says which file failed, and its study keeps every trial (exit 1); SIGTERM stops a search the
way Ctrl-C does, keeping its finished trials (exit 143)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
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
    from tunekv.cli import bench_engine
    from tunekv.cli.main import main

    target = tmp_path / "results" / "r.json"
    target.parent.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / cwd)
    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path / home))
    run_bench = bench_engine.run_bench

    def run_then_lose_the_path(*args, **kwargs):
        result = run_bench(*args, **kwargs)
        lose(target, how)
        return result

    monkeypatch.setattr(bench_engine, "run_bench", run_then_lose_the_path)
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


SIM = ["search", "--gpu", "h100-80gb", "--model", "qwen3-0.6b", "--num-requests", "30", "--json-lines",
       "--fix", "block_size=16,enable_prefix_caching=on", "--range", "max_num_seqs=8:64"]


def fill_disk_under(folder: Path, monkeypatch) -> None:
    """From now on, every file tunekv writes under ``folder`` fails as on a full disk (at its
    fsync); SQLite's own writes go on."""
    fsync = os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)


def test_a_search_whose_exports_hit_a_full_disk_prints_its_summary_and_says_which_file(tmp_path, monkeypatch,
                                                                                        capsys):
    from tunekv.cli.main import main

    out = tmp_path / "out"
    fill_disk_under(out, monkeypatch)  # SQLite (the study) writes on: only the exports fail
    code = main([*SIM, "--budget", "10s", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and "details:" not in err, err
    summary, _, failed = err.partition("error: ")
    assert "best config" in summary and "search ended" in summary, "the summary comes first"
    assert failed.count("\n") == 1, "one line"
    assert f"could not write {out / 'tunekv.yaml'} (No space left on device)" in failed, failed
    study = summary.split("tunekv export --study ")[1].split()[0]
    assert f"the study keeps every trial: tunekv export --study {study} --storage" in failed, failed
    assert not list(out.glob("*.tmp")) and not (out / "tunekv.yaml").exists()
    import optuna

    storage = f"sqlite:///{out / 'study.db'}"
    assert optuna.load_study(study_name=study, storage=storage).trials
    # `tunekv export` on the same full disk: which file, and why (exit 1, no traceback)
    for fmt, target in (("vllm", out / "vllm.yaml"), ("report", out / "report")):
        code = main(["export", "--study", study, "--storage", storage, "--format", fmt, "--out", str(target)])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "details:" not in err, err
        assert f"error: could not write {target}" in err and "(No space left on device)" in err, err


def test_the_tui_says_which_export_a_full_disk_stopped_and_keeps_the_search(tmp_path, monkeypatch):
    from textual.widgets import Input

    from tests.tunekv.tui_helpers import no_gpu, plain, run, wait_until
    from tunekv.tui import last_search
    from tunekv.tui.app import TuneKVApp
    from tunekv.tui.panes.export import ExportPane
    from tunekv.tui.panes.search import SearchPane

    monkeypatch.setenv("TUNEKV_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    fill_disk_under(out, monkeypatch)

    async def go():
        app = TuneKVApp(probe=no_gpu, poll_interval=0, out=str(out), offer_resume=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: bool(app.query("#search-budget")), what="the Search screen")
            await pilot.press("3")
            pane = app.query_one(SearchPane)
            app.query_one("#search-budget", Input).value = "10m"
            app.set_focus(None)
            await pilot.press("s")
            await wait_until(pilot, lambda: pane.best is not None, timeout=120, what="a config that meets the SLO")
            await pilot.press("x")   # stop: the exports of the best so far are written, and the disk is full
            await wait_until(pilot, lambda: not pane.running, what="the stop")
            status = plain(app.query_one("#search-status"))
            assert "search ended (interrupted)" in status and "search failed" not in status, status
            assert f"could not write {out / 'tunekv.yaml'} (No space left on device)" in " ".join(status.split()), \
                status
            assert app.query_one(ExportPane).best is not None, "Export offers the best config to write elsewhere"
        record = last_search.load()
        assert record is not None and record.state == "interrupted"
    run(go())


def test_sigterm_stops_a_search_like_ctrl_c_exits_143_and_the_next_run_resumes(tmp_path):
    from tests.tunekv.run_cli import signalled_search, tunekv

    code, rest, err, waited = signalled_search([*SIM[1:], "--budget", "5m", "--out", str(tmp_path)], signal.SIGTERM)
    assert code == 143, (code, err[-2000:])
    assert waited < 10, f"SIGTERM took {waited:.1f} s"
    end = json.loads(rest.splitlines()[-1])
    assert end["event"] == "end" and end["reason"] == "interrupted"
    assert "Traceback" not in err and "completed trials are kept" in err, err
    met = end["best"] is not None and end["best"]["feasible"]
    assert (tmp_path / "vllm.yaml").is_file() == met, "the exports of the best so far are written"
    resumed = tunekv(*SIM, "--budget", "8s", "--out", str(tmp_path))
    assert json.loads(resumed.stdout.splitlines()[0])["trials_before"] >= 1, "the finished trials were kept"


def test_a_result_written_through_a_symlink_or_into_a_pipe_leaves_them_as_they_were(tmp_path):
    """`--json` names what the user already has: a symlink gets its target rewritten and stays a
    link; a pipe (or /dev/null, /dev/stdout) is written into, never replaced by a plain file."""
    import subprocess
    import sys
    import threading

    from tests.tunekv.run_cli import tunekv

    target = tmp_path / "results" / "latest.json"
    target.parent.mkdir()
    target.write_text("{}\n")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    done = tunekv(*BENCH, "--json", str(link))
    assert done.returncode == 0, done.stderr[-2000:]
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["metrics"]["completed"] == 8
    assert [p.name for p in target.parent.iterdir()] == ["latest.json"], "no temporary file left"

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    proc = subprocess.run([sys.executable, "-m", "tunekv", *BENCH, "--json", str(fifo)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    reader.join(60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fifo.is_fifo() and json.loads(received[0])["metrics"]["completed"] == 8
