"""Where a search's Optuna study lives.

- default: an SQLite file in the output directory (re-running the same command resumes it);
- ``journal:PATH`` (or a path ending in ``.log``): Optuna's journal file, for several processes on
  one host;
- an SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg2://user:pw@host/db``), PostgreSQL for
  several machines each running the same command.

A URL is only ever printed with its password masked.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from pathlib import Path

import optuna

from tunekv.errors import BadInput

DEFAULT_DB = "study.db"


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


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage behind ``url``; ValueError (one sentence, password masked) if it cannot be
    opened or reached."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = url[len("journal:"):] if url.startswith("journal:") else (url if url.endswith(".log") else None)
    if journal is not None:
        path = Path(journal).expanduser()
        if not path.parent.is_dir():
            raise BadInput(f"the journal file's directory {path.parent} does not exist")
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
        if not path.parent.is_dir():
            raise BadInput(f"the directory of the SQLite storage {path.parent} does not exist")
        engine_kwargs = {"connect_args": {"timeout": 30}}  # several local processes may write at once
    elif url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}
    attempt = 0
    while True:
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as exc:
            raise BadInput(f"the storage {mask(url)} needs a database driver that is not installed "
                             f"({exc.name or exc}); for PostgreSQL: pip install psycopg2-binary") from None
        except Exception as exc:  # SQLAlchemy's OperationalError and friends: the server is not there
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            first = reason[0] if reason else type(exc).__name__
            # Processes started together on an empty database race to create Optuna's tables:
            # the loser finds them made and simply opens the storage again.
            if ("already exists" in first or "duplicate key" in first) and attempt < 3:
                attempt += 1
                time.sleep(attempt * random.uniform(0.5, 1.0))
                continue
            raise BadInput(f"cannot reach the storage {mask(url)}: {first.replace(url, mask(url))}") from None


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
