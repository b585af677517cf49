"""Fitting the step-cost model to measured engine steps, and keeping the fits per device.

A fit is kept per (device, model, dtype) under ``$TUNEKV_HOME/calibration`` (default
``~/.cache/tunekv``) with the samples it came from, so every real run can add its steps and the
fit is redone over all of them. For a GPU preset with no fit of its own, the efficiency factors
of the closest calibrated GPU (by memory bandwidth) are applied to the preset's roofline.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunekv.engine.memory import kv_cache_itemsize
from tunekv.engine.model_config import ModelConfig
from tunekv.engine.step_cost import ModelCosts, StepCostParams, StepFeatures
from tunekv.errors import BadInput
from tunekv.fileio import write_json
from tunekv.hardware.gpus import GpuSpec, gpu_presets, match_gpu
from tunekv.home import tunekv_home
from tunekv.predict.planner import weights

if TYPE_CHECKING:
    import torch

MAX_SAMPLES = 20_000
MIN_SAMPLES = 10
MAX_OUTLIER_SHARE = 0.1
# Used only where no GPU has been calibrated yet: the fit of qwen3-0.6b on an H200 (bench/gpu_check.py,
# 2026-11-27, 2,799 steps, median step error 1.9%): matmuls at 36% and attention at 10.5% of the
# bf16 peak, memory at 78% of the HBM bandwidth; 4.2 ms of host time a decode step, 21.5 ms more a
# step with a prefill (eager, no CUDA graph).
DEFAULT_COMPUTE_EFFICIENCY = 0.36
DEFAULT_ATTENTION_EFFICIENCY = 0.105
DEFAULT_MEMORY_EFFICIENCY = 0.78
DEFAULT_OVERHEAD_S = 4.2e-3
DEFAULT_MIXED_OVERHEAD_S = 21.5e-3
DEFAULT_PER_SEQ_S = 9.4e-6
DEFAULT_PER_PREFILL_S = 20.7e-6


POOR_FIT_ERROR = 0.5   # a median step error past this: the simulator's figures are not to be trusted


@dataclass
class FitQuality:
    samples: int
    median_rel_err: float
    p90_rel_err: float
    dropped_outliers: int

    @property
    def warning(self) -> str:
        """"" for a usable fit; else one clause on why it is poor and what fits better."""
        if self.median_rel_err <= POOR_FIT_ERROR:
            return ""
        return ("a poor fit: the machine was busy while it measured, or the steps were too few or too alike; "
                "`tunekv calibrate` on an idle machine, with a longer --budget, fits better")


@dataclass
class Calibration:
    """A fitted cost model and where it came from (shown beside every simulated result)."""

    params: StepCostParams
    source: str                   # "calibrated" | "transferred" | "defaults"
    device: str
    quality: FitQuality | None = None
    note: str = ""

    def describe(self) -> dict:
        out = {"source": self.source, "device": self.device, "params": asdict(self.params), "note": self.note}
        if self.quality is not None:
            out["fit"] = asdict(self.quality)
        return out


def step_costs(mc: ModelConfig, dtype: torch.dtype, kv_cache_dtype: str = "auto", quantization: str | None = None,
               tp: int = 1) -> ModelCosts:
    """The work of a step for ``mc`` in ``dtype`` (a torch dtype) on one of ``tp`` ranks, with the
    KV cache stored as ``kv_cache_dtype`` (the bytes attention reads and writes a token) and the
    matmul weights as ``quantization`` (the bytes streamed a step, as the planner sizes them).
    Matmul FLOPs stay the model's: AWQ and GPTQ dequantize to 16-bit, and fp8 and int8 tensor
    cores are not credited (a conservative prefill)."""
    costs = ModelCosts.from_model(mc, dtype.itemsize, tp)
    lm_head = mc.hf_config.hidden_size * mc.hf_config.vocab_size * dtype.itemsize / tp
    return dataclasses.replace(
        costs, kv_bytes_per_token=mc.kv_bytes_per_token(kv_cache_itemsize(kv_cache_dtype, dtype), tp),
        weight_bytes=weights(mc, dtype.itemsize, quantization, tp).matmul_bytes + lm_head)


NUM_FEATURES = 6  # StepFeatures.as_list()
SAMPLE_FORMAT = 2  # samples stored as StepFeatures.as_list() + [seconds]


def work_matrix(features: list[list[float]], costs: ModelCosts) -> np.ndarray:
    """Columns: sequences, prefills, matmul FLOPs, attention FLOPs, weight bytes, KV bytes."""
    rows = []
    for f in features:
        feat = StepFeatures(int(f[0]), int(f[1]), int(f[2]), int(f[3]), f[4], int(f[5]))
        rows.append([feat.num_seqs, feat.num_prefills, *costs.work(feat)])
    return np.array(rows, dtype=float)


def predict(p: StepCostParams, work: np.ndarray) -> np.ndarray:
    seqs, prefills, linear, attn, weights, kv = work.T
    return (p.overhead_s + (prefills > 0) * p.mixed_overhead_s + p.per_seq_s * seqs + p.per_prefill_s * prefills
            + np.maximum(linear * p.s_per_linear_flop, weights * p.s_per_byte)
            + np.maximum(attn * p.s_per_attn_flop, kv * p.s_per_byte))


def fit_params(features: list[list[float]], seconds: list[float],
               costs: ModelCosts) -> tuple[StepCostParams, FitQuality]:
    """Least squares on relative error for the model of ``StepCostParams``, every coefficient >= 0.

    Each max makes it piecewise linear: every step's matmul and attention phases are assigned
    to their compute- or memory-bound side, the coefficients are solved by non-negative least
    squares, the sides are reassigned, until nothing moves. Decode-only and mixed steps weigh
    the same in total (serving runs have far more of the first). Steps more than 5x the median
    error off (a first-call compilation, a stall of the host) are dropped once and the fit redone."""
    assert features and len(features) == len(seconds), "a fit needs samples"
    work = work_matrix(features, costs)
    t = np.asarray(seconds, dtype=float)
    keep = np.ones(len(t), dtype=bool)
    params = _fit(work, t)
    err = np.abs(predict(params, work) - t) / t
    bad = err > max(0.5, 5 * float(np.median(err)))
    limit = int(len(t) * MAX_OUTLIER_SHARE)  # never more than a tenth of the steps
    if bad.sum() > limit:
        worst = np.argsort(err)[len(t) - limit:]
        bad = np.zeros_like(bad)
        bad[worst] = True
    if bad.any():
        keep = ~bad
        params = _fit(work[keep], t[keep])
        err = np.abs(predict(params, work) - t) / t
    # Relative least squares predicts low on noisy steps (it minimises E[(p - t)^2 / t^2]); scale
    # every coefficient so the kept steps' predicted total equals their measured total, which is
    # what throughput depends on.
    pred = predict(params, work)
    params = StepCostParams(*(v * float(t[keep].sum() / pred[keep].sum()) for v in asdict(params).values()))
    err = np.abs(predict(params, work) - t) / t
    kept = err[keep]
    return params, FitQuality(int(keep.sum()), float(np.median(kept)), float(np.percentile(kept, 90)),
                              int((~keep).sum()))


def _fit(work: np.ndarray, t: np.ndarray) -> StepCostParams:
    seqs, prefills, linear, attn, weights, kv = work.T
    mixed = prefills > 0
    w = 1.0 / t  # relative error: short decode steps count as much as long prefills
    for cls in (mixed, ~mixed):
        if cls.any():
            w[cls] *= np.sqrt(len(t) / (2 * cls.sum()))
    # Scale each quantity to O(1) so the least-squares problems are well conditioned.
    scales = np.array([1.0, 1.0, *(max(float(x.max()), 1.0) for x in (seqs, prefills, linear, attn)),
                       max(float((weights + kv).max()), 1.0)])
    seqs, prefills, linear, attn = seqs / scales[2], prefills / scales[3], linear / scales[4], attn / scales[5]
    weights, kv = weights / scales[6], kv / scales[6]
    ones = np.ones_like(t)

    def design(lin_compute: np.ndarray, attn_compute: np.ndarray) -> np.ndarray:
        memory = np.where(lin_compute, 0.0, weights) + np.where(attn_compute, 0.0, kv)
        return np.stack([ones, mixed * ones, seqs, prefills, np.where(lin_compute, linear, 0.0),
                         np.where(attn_compute, attn, 0.0), memory], axis=1)

    additive = np.stack([ones, mixed * ones, seqs, prefills, linear, attn, weights + kv], axis=1)
    everywhere, nowhere = np.ones(len(t), dtype=bool), np.zeros(len(t), dtype=bool)
    starts = [None, (everywhere, everywhere), (nowhere, nowhere)]
    best: tuple[float, np.ndarray] | None = None
    for start in starts:
        if start is None:
            coef = _nnls(additive * w[:, None], t * w)
            sides = (linear * coef[4] > weights * coef[6], attn * coef[5] > kv * coef[6])
        else:
            sides = start
        for _ in range(50):
            a = design(*sides)
            coef = _nnls(a * w[:, None], t * w)
            pred = (a[:, :4] @ coef[:4] + np.maximum(coef[4] * linear, coef[6] * weights)
                    + np.maximum(coef[5] * attn, coef[6] * kv))
            loss = float(np.sum(((pred - t) * w) ** 2))
            if best is None or loss < best[0]:
                best = (loss, coef)
            new_sides = (linear * coef[4] > weights * coef[6], attn * coef[5] > kv * coef[6])
            if all((x == y).all() for x, y in zip(new_sides, sides)):
                break
            sides = new_sides
    assert best is not None
    return StepCostParams(*(float(x) for x in best[1] / scales))


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares by trying every support set on the normal equations (there
    are only seven columns, so that is 127 tiny solves)."""
    gram, rhs, bb = a.T @ a, a.T @ b, float(b @ b)
    n = a.shape[1]
    best: tuple[float, np.ndarray] | None = None
    for k in range(1, n + 1):
        for support in itertools.combinations(range(n), k):
            idx = list(support)
            try:
                sol = np.linalg.solve(gram[np.ix_(idx, idx)], rhs[idx])
            except np.linalg.LinAlgError:
                continue
            if (sol < 0).any():
                continue
            x = np.zeros(n)
            x[idx] = sol
            loss = float(x @ gram @ x - 2 * x @ rhs + bb)
            if best is None or loss < best[0]:
                best = (loss, x)
    return best[1] if best is not None else np.zeros(n)


# --- the store ----------------------------------------------------------------------------------

def calibration_dir() -> Path:
    return tunekv_home() / "calibration"


def device_key(device_name: str, threads: int | None = None) -> str:
    """A file-name-safe key: the GPU's name, or the CPU with its thread count (speed depends on it)."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    return f"{slug}-{threads}t" if threads is not None else slug


def local_device(device) -> tuple[str, str, GpuSpec | None]:
    """(key, display name, matching GPU preset) of a local torch device."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return device_key(name), name, match_gpu(name)
    name = platform.processor() or platform.machine() or "cpu"
    threads = torch.get_num_threads()
    return device_key(f"cpu-{name}", threads), f"CPU {name} ({threads} threads)", None


@dataclass(frozen=True)
class Variant:
    """What a fit is valid for on one device: the model, the dtype, how steps run (attention
    kernels, CUDA graphs or eager) and the KV cache's dtype.

    The KV cache's dtype is part of it because a refit recomputes every stored step's KV bytes
    from one ``ModelCosts``: steps measured with an fp8 cache, counted at two bytes an element,
    would fit a wrong ``s_per_byte``; and fp8 attention dequantizes as it reads, so its
    efficiency is its own. An fp8 variant with no fit of its own borrows the closest one through
    ``calibration_for_gpu``, labelled "transferred". Weight quantization is not: the engine runs
    unquantized weights only, so every fit is of them, and the simulator charges a quantized
    model's fewer weight bytes at the fitted seconds a byte."""

    model: str
    dtype: str
    backend: str      # torch | triton
    eager: bool
    kv_cache_dtype: str = "auto"

    @property
    def key(self) -> str:
        kv = "" if self.kv_cache_dtype == "auto" else f":kv-{self.kv_cache_dtype}"
        return f"{self.model}:{self.dtype}:{self.backend}{':eager' if self.eager else ''}{kv}"

    @classmethod
    def of(cls, config, device_type: str, dtype: str) -> Variant:
        """The variant an engine with ``config`` runs on ``device_type`` (as the engine resolves it)."""
        backend = config.attention_backend
        if backend == "auto":
            backend = "triton" if device_type == "cuda" else "torch"
        graphs = device_type == "cuda" and backend == "triton" and not config.enforce_eager
        return cls(config.model, dtype, backend, not graphs, config.kv_cache_dtype)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == SAMPLE_FORMAT else {}


def _calibration(entry: dict, source: str, device: str) -> Calibration | None:
    """An entry of a calibration file, or None where it is damaged (a hand edit, an older layout)."""
    try:
        return Calibration(StepCostParams(**entry["params"]), source, device,
                           FitQuality(**entry["fit"]) if "fit" in entry else None)
    except (KeyError, TypeError, AssertionError):
        return None


def record_samples(key: str, device_name: str, gpu: GpuSpec | None, variant: Variant, costs: ModelCosts,
                   samples: list[tuple[StepFeatures, float]]) -> Calibration:
    """Add measured steps to the device's file and refit over all of them (newest kept first)."""
    path = calibration_dir() / f"{key}.json"
    data = _read(path)  # another layout or a damaged file: start over
    data.update(format=SAMPLE_FORMAT, device=device_name, gpu_preset=gpu.key if gpu else None)
    models = data.setdefault("models", {})
    entry = models.get(variant.key)
    if not isinstance(entry, dict) or not isinstance(entry.get("samples"), list):
        entry = models[variant.key] = {"samples": []}
    old = [r for r in entry["samples"] if isinstance(r, list) and len(r) == NUM_FEATURES + 1]
    rows = (old + [[*f.as_list(), s] for f, s in samples if s > 0])[-MAX_SAMPLES:]
    if len(rows) < MIN_SAMPLES:
        raise BadInput(f"only {len(rows)} steps were measured, too few to fit the step cost "
                         f"(at least {MIN_SAMPLES}); give it a longer budget")
    params, quality = fit_params([r[:NUM_FEATURES] for r in rows], [r[NUM_FEATURES] for r in rows], costs)
    entry.update(samples=rows, params=asdict(params), fit=asdict(quality),
                 updated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_json(path, data)
    return Calibration(params, "calibrated", device_name, quality)


def load_calibration(key: str, variant: Variant) -> Calibration | None:
    data = _read(calibration_dir() / f"{key}.json")
    entry = data.get("models", {}).get(variant.key)
    return _calibration(entry, "calibrated", data.get("device", key)) if isinstance(entry, dict) else None


def calibration_for_gpu(spec: GpuSpec, variant: Variant) -> Calibration:
    """This preset's own fit for the variant when this GPU was calibrated; else the preset's
    roofline with the efficiencies and host overheads of the closest calibrated GPU (in memory
    bandwidth; the same model, then the same dtype preferred); else an H200's, labelled as such."""
    candidates = []
    for path in sorted(calibration_dir().glob("*.json")):
        data = _read(path)
        ref = gpu_presets().get(data.get("gpu_preset") or "")
        if ref is None:
            continue
        device = data.get("device", path.stem)
        for name, entry in data.get("models", {}).items():
            cal = _calibration(entry, "calibrated", device) if isinstance(entry, dict) else None
            if cal is None:
                continue
            model, _, rest = name.partition(":")
            distance = abs(math.log(ref.bandwidth_bytes_s / spec.bandwidth_bytes_s))
            candidates.append(((distance, name != variant.key, model != variant.model,
                                not rest.startswith(variant.dtype)), ref, cal, name))
    if not candidates:
        params = StepCostParams(DEFAULT_OVERHEAD_S, DEFAULT_MIXED_OVERHEAD_S, DEFAULT_PER_SEQ_S, DEFAULT_PER_PREFILL_S,
                                1 / (spec.bf16_flops * DEFAULT_COMPUTE_EFFICIENCY),
                                1 / (spec.bf16_flops * DEFAULT_ATTENTION_EFFICIENCY),
                                1 / (spec.bandwidth_bytes_s * DEFAULT_MEMORY_EFFICIENCY))
        return Calibration(params, "defaults", spec.name,
                           note=f"no GPU calibrated here yet: an H200's efficiencies (matmuls "
                                f"{DEFAULT_COMPUTE_EFFICIENCY:.0%}, attention "
                                f"{DEFAULT_ATTENTION_EFFICIENCY:.1%} of peak "
                                f"FLOP/s, memory {DEFAULT_MEMORY_EFFICIENCY:.0%} of bandwidth)")
    rank, ref, cal, name = min(candidates, key=lambda c: c[0])
    if ref.key == spec.key and not rank[1]:
        return cal  # this very GPU and variant: the fit itself
    f = cal.params
    # Same efficiency on the preset's peaks: a unit of work costs the fitted time x ref peak / preset peak.
    flops_ratio, bytes_ratio = ref.bf16_flops / spec.bf16_flops, ref.bandwidth_bytes_s / spec.bandwidth_bytes_s
    params = StepCostParams(f.overhead_s, f.mixed_overhead_s, f.per_seq_s, f.per_prefill_s,
                            f.s_per_linear_flop * flops_ratio, f.s_per_attn_flop * flops_ratio,
                            f.s_per_byte * bytes_ratio)

    def pct(seconds_per_unit: float, peak: float) -> str:
        return f"{1 / (seconds_per_unit * peak):.0%}" if seconds_per_unit > 0 else "n/a"

    fitted_for = f" for {name}" if name != variant.key else ""
    return Calibration(params, "transferred", cal.device, cal.quality,
                       note=f"matmuls at {pct(f.s_per_linear_flop, ref.bf16_flops)} and attention at "
                            f"{pct(f.s_per_attn_flop, ref.bf16_flops)} of peak FLOP/s, memory at "
                            f"{pct(f.s_per_byte, ref.bandwidth_bytes_s)} of bandwidth, as fitted on "
                            f"{cal.device}{fitted_for}")
