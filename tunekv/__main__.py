"""`python -m tunekv`: the `tunekv` command. Like the installed script, it imports nothing from the
working directory: from a checkout's root, this repository's kernels/ would shadow Hugging Face's
`kernels` package, which transformers imports."""

import os
import sys

if sys.path and os.path.abspath(sys.path[0] or ".") == os.getcwd():
    del sys.path[0]

from tunekv.cli import run  # noqa: E402 (after the path is set)

run()
