"""The server a search measures, as its settings name it: its kind, the knobs it has, a
--server-cmd template's placeholders, and whether its program is here. Cheap to import (no torch,
no optuna): `tunekv search` checks these before anything heavy loads."""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex
import shutil
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunekv.errors import BadInput, shorten
from tunekv.search.options import ServerName
from tunekv.search.space import KNOBS

__all__ = ["TEMPLATE_FIELDS", "ServerKind", "ServerSpec", "check_server", "server_knobs", "template_knobs"]

ServerKind = Literal[ServerName, "command", "endpoint"]
TEMPLATE_FIELDS = ("port", "host", "model")             # placeholders a --server-cmd has besides the knobs
_NOT_TGI = ("block_size", "enable_chunked_prefill", "kv_policy")   # TGI sizes its pages and chunks itself
_KNOBS: dict[str, tuple[str, ...]] = {
    "tunekv": KNOBS,
    "vllm": tuple(k for k in KNOBS if k != "kv_policy"),
    "sglang": tuple(k for k in KNOBS if k != "kv_policy"),
    "tgi": tuple(k for k in KNOBS if k not in _NOT_TGI),
    "endpoint": (),
}


@dataclass(frozen=True)
class ServerSpec:
    """The server a search measures, as its study stores it (``spec["server"]``)."""

    kind: ServerKind
    command: str | None = None      # a --server-cmd template
    health: str = "/health"
    endpoint: str | None = None     # a running deployment's URL (without credentials)

    @property
    def name(self) -> str:
        """How messages name it: the template's program for a command."""
        if self.kind == "command":
            assert self.command is not None, "a command server has its template"
            return Path(shlex.split(self.command)[0]).name
        return {"tunekv": "tunekv serve", "endpoint": "the deployment"}.get(self.kind, self.kind)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def template_knobs(template: str) -> tuple[str, ...]:
    """The knobs a --server-cmd template names; BadInput for a placeholder that is neither a knob
    nor port/host/model, a template without {port}, or one that does not parse."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
        argv = shlex.split(template)
    except ValueError as exc:
        raise BadInput(f"--server-cmd does not parse ({exc}); quote it whole and write {{port}} for the port") \
            from None
    if not argv:
        raise BadInput("--server-cmd is empty; give the command that starts the server, with {port}")
    for name in names:
        if name not in KNOBS and name not in TEMPLATE_FIELDS:
            raise BadInput(f"--server-cmd has the placeholder {{{shorten(name)}}}; placeholders are "
                           f"{', '.join('{' + n + '}' for n in TEMPLATE_FIELDS + KNOBS)}")
    if "port" not in names:
        raise BadInput("--server-cmd must take the port tunekv picks: write {port} where the server's port goes")
    return tuple(k for k in KNOBS if k in names)


def server_knobs(spec: ServerSpec) -> tuple[str, ...]:
    if spec.kind == "command":
        assert spec.command is not None, "a command server has its template"
        return template_knobs(spec.command)
    return _KNOBS[spec.kind]


def check_server(spec: ServerSpec) -> None:
    """The server's program is here: BadInput naming what to install otherwise."""
    if spec.kind == "vllm" and shutil.which("vllm") is None:
        raise BadInput("--server vllm: the vllm command is not on PATH; `pip install vllm` here, or give the "
                       "command with --server-cmd")
    if spec.kind == "tgi" and shutil.which("text-generation-launcher") is None:
        raise BadInput("--server tgi: text-generation-launcher is not on PATH (TGI's launcher, installed with TGI or "
                       "in its container); or give the command with --server-cmd")
    if spec.kind == "sglang" and importlib.util.find_spec("sglang") is None:
        raise BadInput(f"--server sglang: sglang is not installed for {sys.executable}; `pip install sglang` "
                       "here, or give the command with --server-cmd")
    if spec.kind == "command":
        assert spec.command is not None, "a command server has its template"
        program = shlex.split(spec.command)[0]
        if shutil.which(program) is None:
            raise BadInput(f"--server-cmd: {shorten(program)} is not a program on PATH")
