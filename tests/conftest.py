from __future__ import annotations

import os
import tempfile

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # Triton reads this when a kernel is decorated: it must be set before tunekv.kernels loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Test models are tiny: one thread is faster than two (no OpenMP barriers), and immune to a
# busy second core, where each parallel region can wait a whole scheduler slice.
torch.set_num_threads(1)
# Calibrations land here, not in the user's ~/.cache (subprocesses inherit it).
os.environ["TUNEKV_HOME"] = tempfile.mkdtemp(prefix="tunekv-test-home-")
