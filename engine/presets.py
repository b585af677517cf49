"""Where the preset YAML files live (they ship in the wheel as ``tunekv.presets``).

Kept apart from ``model_config`` so that listing presets does not import transformers or torch:
the TUI's first screen and ``tunekv --help`` need the names, not the models."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def preset_dir() -> Path:
    return Path(str(resources.files("tunekv.presets")))


def preset_names(kind: str) -> list[str]:
    """Preset names of one kind: ``models``, ``gpus``, ``workloads`` or ``slo``."""
    return sorted(p.stem for p in (preset_dir() / kind).glob("*.yaml"))
