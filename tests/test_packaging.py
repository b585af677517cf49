"""`pip install .` (a real wheel, not the editable install the suite runs on) ships the engine,
kernels and presets under `tunekv.*` and nothing with a generic top-level name."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (path,) = out.glob("tunekv-*.whl")
    return path


def test_wheel_maps_folders_to_subpackages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("tunekv/engine/llm_engine.py", "tunekv/engine/models/llama.py",
                     "tunekv/kernels/reference.py", "tunekv/presets/models/tiny-llama.yaml",
                     "tunekv/presets/models/llama-3-70b.yaml"):
        assert expected in names
    assert not [n for n in names if n.split("/")[0] in ("engine", "kernels", "presets", "tests", "bench")]


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    code = (f"import tunekv.engine as e, tunekv.kernels as k; assert e.__file__.startswith({str(target)!r}), "
            "e.__file__; eng = e.LLMEngine(e.EngineConfig(model='tiny-llama', device='cpu', max_model_len=64, "
            "num_kv_blocks=8)); print(len(eng.generate([[1, 2, 3]], e.SamplingParams(max_tokens=3, "
            "ignore_eos=True))[0].output_token_ids))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    script = subprocess.run([str(target / "bin" / "tunekv"), "--version"], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert (script.returncode, script.stdout.strip()) == (0, "tunekv 0.1.0"), script.stderr
