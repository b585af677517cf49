"""Bad input about files and storage, one row each: an output path that cannot be written, a
damaged or foreign study file, a storage URL whose driver is missing. Each is refused before
anything runs (exit 2, one sentence, nothing created or changed; tests/tunekv/run_cli.py)."""

from __future__ import annotations

import importlib.util
import random
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest

from tests.tunekv.run_cli import refused, tunekv

SEARCH = ["search", "--gpu", "h100-80gb", "--model", "qwen3-0.6b", "--num-requests", "30", "--budget", "10s",
          "--fix", "block_size=16,enable_prefix_caching=on", "--range", "max_num_seqs=8:64"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Path, str]:
    """One short simulated search for the module: its study.db and the study's name."""
    out = tmp_path_factory.mktemp("searched") / "out"
    done = tunekv(*SEARCH, "--json-lines", "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr
    db = out / "study.db"
    [name] = optuna.get_all_study_names(f"sqlite:///{db}")
    return db, name


@pytest.fixture
def files(searched, tmp_path) -> dict[str, str]:
    """In ``tmp_path``: the study (study.db), a damaged copy, a text file and an empty file named
    like databases, an SQLite database of someone else's, a regular file and an empty folder."""
    db, name = searched
    shutil.copy(db, tmp_path / "study.db")
    data = db.read_bytes()
    rng = random.Random(0)
    (tmp_path / "damaged.db").write_bytes(data[:4096] + bytes(rng.getrandbits(8) for _ in range(len(data) - 4096)))
    (tmp_path / "text.db").write_text("these are my notes, not a database\n")
    (tmp_path / "empty.db").write_bytes(b"")
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    (tmp_path / "afile").write_text("a regular file\n")
    (tmp_path / "adir").mkdir()
    return {"study": name, "tmp": str(tmp_path)}


EXPORT = ["export", "--study", "{study}", "--storage", "sqlite:///{tmp}/study.db"]
PSYCOPG3 = importlib.util.find_spec("psycopg") is not None

CASES = [
    # 1. an output path that cannot be written: refused up front, naming the path and the reason
    pytest.param([*EXPORT, "--format", "vllm", "--out", "/proc/x"], "--out /proc/x: cannot create files in /proc",
                 id="export-out-in-proc"),
    pytest.param([*EXPORT, "--format", "vllm", "--out", "{tmp}/afile/x"], "afile is a file, not a directory",
                 id="export-out-under-a-file"),
    pytest.param([*EXPORT, "--format", "vllm", "--out", "/proc/version/x"], "/proc/version is a file, not a directory",
                 id="export-out-under-a-proc-file"),
    pytest.param([*EXPORT, "--format", "report", "--out", "/proc/x"], "--out /proc/x: cannot create files in /proc",
                 id="export-report-in-proc"),
    pytest.param([*EXPORT, "--format", "report", "--out", "{tmp}/afile"], "afile is a file, not a directory",
                 id="export-report-to-a-file"),
    pytest.param([*EXPORT, "--format", "report", "--out", "{tmp}/afile/r"], "afile is a file, not a directory",
                 id="export-report-under-a-file"),
    pytest.param([*SEARCH, "--out", "/proc"], "--out /proc: cannot create files in /proc", id="search-out-proc"),
    pytest.param([*SEARCH, "--out", "{tmp}/afile"], "--out {tmp}/afile is a file, not a directory",
                 id="search-out-is-a-file"),
    pytest.param(["bench", "--simulate", "--gpu", "h100-80gb", "--model", "qwen3-0.6b", "--num-requests", "4",
                  "--json", "/proc/x"], "--json /proc/x: cannot create files in /proc", id="bench-json-in-proc"),
    # overlong names: refused or echoed shortened, never printed whole
    pytest.param(["export", "--study", "s" * 100_000, "--format", "vllm"],
                 "--study takes a name of 1 to 128 characters, got 100000", id="export-overlong-study"),
    pytest.param(["export", "--study", "s", "--storage", "sqlite:///" + "d" * 100_000, "--format", "vllm"],
                 "--storage takes a URL of at most 2048 characters", id="export-overlong-storage"),
    pytest.param(["export", "--study", "s", "--storage", "sqlite:///" + "d" * 300 + ".db", "--format", "vllm"],
                 "cannot open the SQLite storage ddd", id="export-storage-name-too-long"),
    pytest.param(["export", "--study", "s", "--storage", "journal:" + "d" * 300 + ".log", "--format", "vllm"],
                 "cannot open the journal file ddd", id="export-journal-name-too-long"),
    pytest.param(["bench", "--simulate", "--gpu", "h100-80gb", "--model", "qwen3-0.6b", "--num-requests", "4",
                  "--json", "/proc/" + "x" * 100_000], "--json /proc/xxx", id="bench-json-overlong-path"),
    # 2. a damaged database, or a file that is not one: said so, not a driver's message
    pytest.param([*EXPORT[:-1], "sqlite:///{tmp}/damaged.db", "--format", "vllm"],
                 "{tmp}/damaged.db is not an intact SQLite database", id="export-damaged-db"),
    pytest.param([*EXPORT[:-1], "sqlite:///{tmp}/text.db", "--format", "vllm"],
                 "{tmp}/text.db is not an intact SQLite database", id="export-text-file-db"),
    pytest.param([*SEARCH, "--out", "{tmp}/adir", "--storage", "sqlite:///{tmp}/damaged.db"],
                 "{tmp}/damaged.db is not an intact SQLite database", id="search-damaged-db"),
    pytest.param([*SEARCH, "--out", "{tmp}/adir", "--storage", "sqlite:///{tmp}/text.db"],
                 "{tmp}/text.db is not an intact SQLite database", id="search-text-file-db"),
    pytest.param([*SEARCH, "--out", "{tmp}/adir", "--storage", "sqlite:////proc/x.db"],
                 "--storage /proc/x.db: cannot create files in /proc", id="search-storage-in-proc"),
    # 3. export only reads: a file without a study, or no file, is refused and left as it was
    pytest.param([*EXPORT[:-1], "sqlite:///{tmp}/empty.db", "--format", "vllm"],
                 "no tunekv search study in {tmp}/empty.db", id="export-empty-db"),
    pytest.param([*EXPORT[:-1], "sqlite:///{tmp}/other.db", "--format", "vllm"],
                 "no tunekv search study in {tmp}/other.db", id="export-foreign-db"),
    pytest.param([*EXPORT[:-1], "journal:{tmp}/missing.log", "--format", "vllm"],
                 "no search storage at {tmp}/missing.log", id="export-missing-journal"),
    pytest.param([*EXPORT[:-1], "{tmp}/missing.log", "--format", "vllm"],
                 "no search storage at {tmp}/missing.log", id="export-missing-journal-by-suffix"),
    # 4. a URL without a driver name uses the installed one; a driver that is missing is named
    pytest.param([*SEARCH, "--out", "{tmp}/adir", "--storage", "postgresql://tuner@127.0.0.1:9/db"],
                 "cannot reach the storage postgresql://tuner@127.0.0.1:9/db", id="search-postgresql-default-driver"),
    pytest.param([*EXPORT[:-1], "postgresql://tuner@127.0.0.1:9/db", "--format", "vllm"],
                 "cannot reach the storage postgresql://tuner@127.0.0.1:9/db", id="export-postgresql-default-driver"),
    pytest.param([*SEARCH, "--out", "{tmp}/adir", "--storage", "postgresql+psycopg://tuner@127.0.0.1:9/db"],
                 "needs the Python driver psycopg, which is not installed: pip install 'psycopg[binary]', or use "
                 "postgresql+psycopg2://", id="search-postgresql-missing-driver",
                 marks=pytest.mark.skipif(PSYCOPG3, reason="psycopg (3) is installed here")),
]


@pytest.mark.parametrize("args, message", CASES)
def test_refused(files, tmp_path, args, message):
    refused(*(a.format(**files) for a in args), cwd=tmp_path, message=message.format(**files), timeout=90)
