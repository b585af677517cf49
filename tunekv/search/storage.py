"""Where a search's Optuna study lives.

- default: an SQLite file in the output directory (re-running the same command resumes it);
- ``journal:PATH`` (or a path ending in ``.log``): Optuna's journal file, for several processes on
  one host;
- an SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg2://user:pw@host/db``), PostgreSQL for
  several machines each running the same command.

A URL is only ever printed with its password masked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import re
import socket
import sqlite3
import time
from pathlib import Path

import optuna

from tunekv.errors import BadInput, shorten
from tunekv.fileio import check_output_path

DEFAULT_DB = "study.db"
OPTUNA_TABLES = {"studies", "trials"}  # what makes an SQLite file an Optuna storage


def mask(url: str) -> str:
    """The URL with its password (in the authority or as a ``password=`` parameter) as ***."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        masked = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: hide everything between :// and @
        scheme, _, rest = url.partition("://")
        masked = f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else url
    return re.sub(r"(?i)((?:password|passwd)=)[^&]*", r"\1***", masked)


def default_url(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).expanduser().resolve() / DEFAULT_DB}"


def open_storage(url: str, read_only: bool = False) -> optuna.storages.BaseStorage:
    """The storage behind ``url``; BadInput (one sentence, password masked) if it cannot be opened
    or reached. With ``read_only`` (tunekv export) no file is created or changed: a file that does
    not exist, or an SQLite file without Optuna's tables, is refused before Optuna opens it (Optuna
    would create the file, or the tables)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = url[len("journal:"):] if url.startswith("journal:") else (url if url.endswith(".log") else None)
    if journal is not None:
        path = Path(journal).expanduser()
        try:
            if read_only and not path.is_file():
                raise BadInput(f"no search storage at {path}")
            if not path.parent.is_dir():
                raise BadInput(f"the journal file's directory {path.parent} does not exist")
        except OSError as exc:   # a name too long for the system
            raise BadInput(f"cannot open the journal file {shorten(str(path))} ({exc.strerror or exc})") from None
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise BadInput(f"cannot open the journal file {path} ({exc.strerror or exc})") from None
    if "://" not in url:
        raise BadInput(f"--storage takes an SQLAlchemy URL (sqlite:///study.db, postgresql+psycopg2://user@host/db) "
                         f"or journal:PATH; got '{mask(url)}'")
    engine_kwargs: dict = {}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):]).expanduser()
        try:
            if read_only and not path.is_file():
                raise BadInput(f"no search storage at {path}")
            if not path.parent.is_dir():
                raise BadInput(f"the directory of the SQLite storage {path.parent} does not exist")
            exists = path.exists()
        except OSError as exc:   # a name too long for the system
            raise BadInput(f"cannot open the SQLite storage {shorten(str(path))} ({exc.strerror or exc})") from None
        if exists:
            tables = sqlite_tables(path)
            if read_only and tables is not None and not OPTUNA_TABLES <= tables:
                raise BadInput(f"no tunekv search study in {path}")
        else:
            check_output_path(path, "--storage")
        engine_kwargs = {"connect_args": {"timeout": 30}}  # several local processes may write at once
    elif url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}
    dsn = with_installed_driver(url)
    attempt = 0
    while True:
        try:
            return optuna.storages.RDBStorage(dsn, engine_kwargs=engine_kwargs)
        except ImportError as exc:
            raise BadInput(missing_driver(url, exc)) from None
        except Exception as exc:  # SQLAlchemy's OperationalError and friends: the server is not there
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            first = (reason[0] if reason else type(exc).__name__).replace(dsn, mask(url))
            # Processes started together on an empty database race to create Optuna's tables:
            # the loser finds them made and simply opens the storage again.
            if ("already exists" in first or "duplicate key" in first) and attempt < 3:
                attempt += 1
                time.sleep(attempt * random.uniform(0.5, 1.0))
                continue
            raise BadInput(f"cannot reach the storage {mask(url)}: {first.replace(url, mask(url))}") from None


# PostgreSQL's drivers: import name -> what to pip install.
PG_DRIVERS = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def with_installed_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy's choice depends on its version (2.0:
    psycopg2, 2.1: psycopg 3); when that one is not installed and another is, the URL names it."""
    scheme, _, rest = url.partition("://")
    if scheme != "postgresql":
        return url
    from sqlalchemy.engine import make_url

    try:
        default = make_url(url).get_dialect().driver
    except Exception:  # not a URL SQLAlchemy reads: opening it says why
        return url
    if installed(default):
        return url
    other = next((d for d in PG_DRIVERS if installed(d)), None)
    return url if other is None else f"postgresql+{other}://{rest}"


def missing_driver(url: str, exc: ImportError) -> str:
    """Which driver ``url`` needs, how to install it, and a URL for an installed one."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc  # Optuna re-raises SQLAlchemy's
    module = (cause.name or "").partition(".")[0]
    if not module:
        return f"the storage {mask(url)} needs a database driver that is not installed ({cause})"
    if url.startswith("postgresql://"):  # no driver named, and none installed (with_installed_driver)
        return (f"the storage {mask(url)} needs a PostgreSQL driver and none is installed: pip install "
                f"{PG_DRIVERS['psycopg2']} (or {PG_DRIVERS['psycopg']})")
    text = (f"the storage {mask(url)} needs the Python driver {module}, which is not installed: pip install "
            f"{PG_DRIVERS.get(module, module)}")
    other = next((d for d in PG_DRIVERS if d != module and installed(d)), None)
    if url.startswith("postgresql") and other is not None:
        text += f", or use postgresql+{other}://, whose driver is installed"
    return text


def sqlite_tables(path: Path) -> set[str] | None:
    """The tables of the SQLite file at ``path``, read on a read-only connection once SQLite's
    quick_check passed; BadInput when the file is not an SQLite database or a damaged one. None
    when SQLite cannot tell (the file is locked or unreadable: opening it says why)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        return None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        problems = [str(exc)]
    if problems != ["ok"]:
        lines = [line for p in problems for line in str(p).splitlines() if line and not line.startswith("***")]
        raise BadInput(f"{path} is not an intact SQLite database (SQLite: {(lines or ['damaged'])[0]}); give another "
                       "--storage or restore the file from a backup")
    return tables


def owner() -> str:
    """Who runs a trial: host and process id (to recognise trials a killed run left behind)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def orphaned(owner_tag: str) -> bool:
    """True when ``owner_tag`` names a process on this host that no longer runs."""
    host, _, pid = owner_tag.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid) == os.getpid()
