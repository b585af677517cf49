"""The GPU check: kernels (attention and the fused layer ops) vs references, kernel bandwidth, an
fp8 KV cache, engine vs transformers, decode roofline, `tunekv serve` vs the engine in process, the
simulator vs the engine (runs and capacity under an SLO, with the GPU count it implies).
``--only`` runs named sections; the diagnostics in ``DIAGNOSTICS`` run only when named there.

Run through ``bench/gpu_check.sh`` (sets PYTHONPATH). Sections run in order; each writes its
results into ``bench/results/gpu-<card>-<date>.json`` as soon as it finishes (atomically), and a
failing section records its error and the run goes on. ``--smoke`` shrinks every shape and runs
on the CPU (Triton interpreter) to test this script without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import random
import re
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after the shim, which maps tunekv.engine

from bench._common import machine, write_result  # noqa: E402
from tunekv.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from tunekv.engine.model_config import load_model_config  # noqa: E402
from tunekv.kernels import (  # noqa: E402
    DecodeTile,
    PrefillTile,
    paged_decode_attention,
    paged_decode_attention_ref,
    paged_prefill_attention,
    paged_prefill_attention_ref,
    rms_norm,
    rms_norm_ref,
    rotary_embedding,
    rotary_embedding_ref,
    silu_and_mul,
    silu_and_mul_ref,
    write_kv_cache,
    write_kv_cache_ref,
)
from tunekv.kernels.decode_attention import default_num_splits  # noqa: E402
from tunekv.kernels.reference import FP8_DTYPE, FP8_MAX, dequantize_kv, quantize_kv  # noqa: E402

SHAPES = {"llama-3-8b": (32, 8, 128), "qwen3-0.6b": (16, 8, 128)}  # query heads, KV heads, head_dim


class Check:
    def __init__(self, smoke: bool, budget_s: float) -> None:
        self.smoke = smoke
        self.cuda = torch.cuda.is_available() and not smoke
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.start = time.monotonic()
        self.budget_s = budget_s
        card = torch.cuda.get_device_name() if self.cuda else "cpu-smoke"
        self.card = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
        self.result: dict = {"machine": machine(), "card": card, "smoke": smoke, "sections": {}}
        self.table: list[tuple[str, str, str]] = []

    def copy_gbs(self) -> float:
        """The copy bandwidth the kernel timings measured, else measured now."""
        measured = self.result["sections"].get("kernel timings", {}).get("copy_bandwidth_gbs")
        if measured:
            return measured
        n = (1 << 20) if self.smoke else (1 << 30)
        src = torch.empty(n, dtype=torch.uint8, device=self.device)
        dst = torch.empty_like(src)
        return 2 * n / self.timeit(functools.partial(dst.copy_, src)) / 1e6

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def save(self) -> Path:
        return write_result(f"gpu-{self.card}", self.result)

    def partial(self, name: str, data: dict) -> None:
        """Saves a section's results so far, so a run cut short still keeps them."""
        self.result["sections"][name] = data
        self.save()

    def section(self, name: str, fn, min_left_s: float = 0.0) -> None:
        if self.left() < min_left_s:
            self.result["sections"][name] = {"skipped": f"only {self.left():.0f} s of the budget left"}
            self.table.append((name, "skipped", "budget"))
            self.save()
            return
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            data = fn()
        except Exception as exc:  # a failing section must not lose the others
            traceback.print_exc()
            data = {"error": f"{type(exc).__name__}: {exc}"}
            self.table.append((name, "ERROR", str(exc)[:60]))
        data["seconds"] = round(time.monotonic() - t0, 1)
        self.result["sections"][name] = data
        self.save()

    def timeit(self, fn, iters: int = 50, warmup: int = 5) -> float:
        """Median milliseconds of ``fn`` (CUDA events on a GPU)."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters if self.cuda else 2):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)


def nvml_snapshot() -> dict:
    try:
        import pynvml
    except ImportError:
        return {"error": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        out = {"memory_used_mib": mem.used // 2**20, "memory_total_mib": mem.total // 2**20}
        for key, fn in (("sm_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                        ("mem_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)),
                        ("power_w", lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000),
                        ("temperature_c", lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                        ("utilization_pct", lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu)):
            try:
                out[key] = fn()
            except pynvml.NVMLError as exc:
                out[key] = f"n/a ({exc})"
        return out
    except pynvml.NVMLError as exc:
        return {"error": str(exc)}


class NvmlSampler:
    """Samples NVML every 0.5 s in a thread while a section runs; keeps the peaks."""

    def __init__(self) -> None:
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(nvml_snapshot())

    def __enter__(self) -> NvmlSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self) -> dict:
        out: dict = {}
        for sample in self.samples:
            for key, value in sample.items():
                if isinstance(value, (int, float)):
                    out[key] = max(out.get(key, value), value)
        return out


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()


def paged_inputs(batch: int, ctx: int, heads: int, kv_heads: int, dim: int, dtype, device, block_size: int = 16):
    nb_per = -(-ctx // block_size)
    num_blocks = batch * nb_per
    k = torch.randn(num_blocks, block_size, kv_heads, dim, dtype=dtype, device=device)
    v = torch.randn_like(k)
    tables = torch.randperm(num_blocks, device=device).reshape(batch, nb_per).to(torch.int32)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
    return k, v, tables, seq_lens


def kernel_correctness(c: Check) -> dict:
    rows = []
    batches, ctxs = ([1, 3], [16, 40]) if c.smoke else ([1, 16, 256], [128, 1024, 8192])
    dtypes = [torch.float16] if c.smoke else [torch.bfloat16, torch.float16]
    worst = 0.0
    for model, (heads, kv_heads, dim) in SHAPES.items():
        for dtype in dtypes:
            for batch in batches:
                for ctx in ctxs:
                    if batch * ctx > 16 * 8192:
                        continue  # the fp32 reference would gather tens of GB
                    k, v, tables, seq_lens = paged_inputs(batch, ctx, heads, kv_heads, dim, dtype, c.device)
                    seq_lens[0] = max(1, ctx - 7)  # a ragged row
                    q = torch.randn(batch, heads, dim, dtype=dtype, device=c.device)
                    ref = paged_decode_attention_ref(q.float(), k.float(), v.float(), tables, seq_lens, dim ** -0.5)
                    out = paged_decode_attention(q, k, v, tables, seq_lens, dim ** -0.5)
                    err = rel_err(out, ref)
                    worst = max(worst, err)
                    rows.append({"kernel": "decode", "model": model, "dtype": str(dtype)[6:], "batch": batch,
                                 "ctx": ctx, "rel_err": err})
                    del k, v, ref, out
            cases = [(2, 0, 24), (2, 17, 9)] if c.smoke else [(4, 0, 512), (4, 1024, 512), (1, 8000, 192)]
            for batch, ctx, new in cases:
                k, v, tables, seq_lens = paged_inputs(batch, ctx + new, heads, kv_heads, dim, dtype, c.device)
                q = torch.randn(batch * new, heads, dim, dtype=dtype, device=c.device)
                qsl = torch.arange(0, batch * new + 1, new, dtype=torch.int32, device=c.device)
                ref = paged_prefill_attention_ref(q.float(), k.float(), v.float(), tables, qsl, seq_lens, dim ** -0.5)
                out = paged_prefill_attention(q, k, v, tables, qsl, seq_lens, dim ** -0.5)
                err = rel_err(out, ref)
                worst = max(worst, err)
                rows.append({"kernel": "prefill", "model": model, "dtype": str(dtype)[6:], "batch": batch,
                             "ctx": ctx, "new": new, "rel_err": err})
    layer_worst = 0.0
    tokens = 5 if c.smoke else 1000
    for dtype in dtypes:
        gen = torch.Generator(device=c.device).manual_seed(0)
        x = torch.randn(tokens, 4096, generator=gen, device=c.device).to(dtype)
        residual = torch.randn(tokens, 4096, generator=gen, device=c.device).to(dtype)
        weight = torch.randn(4096, generator=gen, device=c.device).to(dtype)
        got_res, ref_res = residual.clone(), residual.clone()
        checks = {"rms_norm+residual": (rms_norm(x, weight, 1e-5, got_res), rms_norm_ref(x, weight, 1e-5, ref_res)),
                  "residual sum": (got_res, ref_res),
                  "silu_and_mul": (silu_and_mul(torch.cat((x, residual), 1)),
                                   silu_and_mul_ref(torch.cat((x, residual), 1)))}
        qkv = torch.randn(tokens, 48 * 128, generator=gen, device=c.device).to(dtype)
        q, k = qkv[:, :4096].view(tokens, 32, 128), qkv[:, 4096:5120].view(tokens, 8, 128)
        angles = torch.rand(tokens, 64, generator=gen, device=c.device) * 100
        cos = torch.cat((angles.cos(), angles.cos()), 1).to(dtype)
        sin = torch.cat((angles.sin(), angles.sin()), 1).to(dtype)
        norms = (weight[:128].contiguous(), weight[128:256].contiguous(), 1e-6)
        for name, extra in (("rope", ()), ("qk_norm+rope", norms)):
            got, ref = rotary_embedding(q, k, cos, sin, *extra), rotary_embedding_ref(q, k, cos, sin, *extra)
            checks[f"{name} q"], checks[f"{name} k"] = (got[0], ref[0]), (got[1], ref[1])
        for name, (got, ref) in checks.items():
            err = rel_err(got, ref)
            layer_worst = max(layer_worst, err)
            rows.append({"kernel": name, "dtype": str(dtype)[6:], "tokens": tokens, "rel_err": err})
    c.table.append(("kernels vs fp32 reference", f"max rel err {worst:.2e}", "bf16/fp16, ok < 2e-2"))
    c.table.append(("fused layer ops vs torch ops", f"max rel err {layer_worst:.2e}", "same roundings, ok < 1e-2"))
    return {"max_rel_err": worst, "layer_ops_max_rel_err": layer_worst, "cases": rows}


def kernel_timings(c: Check) -> dict:
    n = (1 << 20) if c.smoke else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=c.device)
    dst = torch.empty_like(src)
    ms = c.timeit(functools.partial(dst.copy_, src))
    copy_gbs = 2 * n / ms / 1e6
    del src, dst
    out: dict = {"copy_bandwidth_gbs": copy_gbs, "decode": [], "prefill": []}
    heads, kv_heads, dim = SHAPES["llama-3-8b"]
    dtype = torch.float16 if c.smoke else torch.bfloat16
    best = 0.0
    for batch, ctx in ([(2, 32)] if c.smoke else [(1, 8192), (32, 1024), (64, 1024), (256, 1024), (64, 4096)]):
        k, v, tables, seq_lens = paged_inputs(batch, ctx, heads, kv_heads, dim, dtype, c.device)
        q = torch.randn(batch, heads, dim, dtype=dtype, device=c.device)
        o = torch.empty_like(q)
        call = functools.partial(paged_decode_attention, q, k, v, tables, seq_lens, dim ** -0.5, out=o, max_seq_len=ctx)
        ms = c.timeit(call)
        graph_ms = graph_timeit(c, call)  # as the engine runs it: no host launch cost between calls
        kv_bytes = 2 * batch * ctx * kv_heads * dim * k.element_size()
        gbs = kv_bytes / graph_ms / 1e6
        if batch >= 32 and ctx >= 1024:
            best = max(best, gbs / copy_gbs)
        out["decode"].append({"batch": batch, "ctx": ctx, "ms": ms, "graph_ms": graph_ms, "gbs": gbs,
                              "of_copy": gbs / copy_gbs})
        del k, v
    for batch, seqlen in ([(1, 32)] if c.smoke else [(4, 2048), (1, 8192)]):
        k, v, tables, seq_lens = paged_inputs(batch, seqlen, heads, kv_heads, dim, dtype, c.device)
        q = torch.randn(batch * seqlen, heads, dim, dtype=dtype, device=c.device)
        qsl = torch.arange(0, batch * seqlen + 1, seqlen, dtype=torch.int32, device=c.device)
        ms = c.timeit(functools.partial(paged_prefill_attention, q, k, v, tables, qsl, seq_lens, dim ** -0.5,
                                        max_query_len=seqlen), iters=20)
        qs = q.view(batch, seqlen, heads, dim).transpose(1, 2)
        ks = torch.randn(batch, kv_heads, seqlen, dim, dtype=dtype, device=c.device)
        vs = torch.randn_like(ks)
        sdpa_ms = c.timeit(functools.partial(torch.nn.functional.scaled_dot_product_attention,
                                             qs, ks, vs, is_causal=True, enable_gqa=True), iters=20)
        flops = 4 * batch * heads * dim * seqlen * seqlen / 2
        out["prefill"].append({"batch": batch, "seqlen": seqlen, "ms": ms, "sdpa_ms": sdpa_ms,
                               "vs_sdpa": sdpa_ms / ms, "tflops": flops / ms / 1e9})
        del k, v
    c.table.append(("decode kernel bandwidth (graph)", f"{best:.0%} of copy", "target >= 70% (b>=32, ctx>=1k)"))
    c.table.append(("prefill kernel vs SDPA", f"{out['prefill'][0]['vs_sdpa']:.2f}x", "SDPA time / ours"))
    return out


DECODE_SWEEP = [DecodeTile(64, 4, 3), DecodeTile(64, 4, 2), DecodeTile(128, 4, 3), DecodeTile(32, 2, 4)]
PREFILL_SWEEP = [PrefillTile(128, 64, 8, 2), PrefillTile(128, 64, 8, 3), PrefillTile(128, 64, 8, 4),
                 PrefillTile(128, 128, 8, 2), PrefillTile(128, 128, 8, 3), PrefillTile(64, 64, 4, 2),
                 PrefillTile(64, 64, 4, 3), PrefillTile(64, 128, 4, 2), PrefillTile(128, 32, 4, 2),
                 PrefillTile(128, 64, 4, 2)]


def kernel_sweep(c: Check) -> dict:
    """Launch shapes of both kernels timed side by side (llama-3-8b heads, bf16), each output
    checked against the default shape's; decode also at other split counts. Diagnostic: opt-in."""
    heads, kv_heads, dim = SHAPES["llama-3-8b"]
    dtype = torch.float16 if c.smoke else torch.bfloat16
    out: dict = {"decode": [], "prefill": []}
    copy_gbs = c.copy_gbs()
    for batch, ctx in ([(2, 32)] if c.smoke else [(1, 8192), (32, 1024), (64, 1024), (256, 1024), (64, 4096)]):
        k, v, tables, seq_lens = paged_inputs(batch, ctx, heads, kv_heads, dim, dtype, c.device)
        q = torch.randn(batch, heads, dim, dtype=dtype, device=c.device)
        kv_bytes = 2 * batch * ctx * kv_heads * dim * k.element_size()
        expected = paged_decode_attention(q, k, v, tables, seq_lens, dim ** -0.5)
        sms = torch.cuda.get_device_properties(0).multi_processor_count if c.cuda else 132
        base_splits = default_num_splits(batch, kv_heads, ctx, 64, sms)
        runs = [(tile, base_splits) for tile in DECODE_SWEEP]
        runs += [(DECODE_SWEEP[0], s) for s in sorted({max(1, base_splits // 2), min(64, base_splits * 2),
                                                        min(64, base_splits * 4)} - {base_splits})]
        for tile, splits in runs:
            o = torch.empty_like(q)
            call = functools.partial(paged_decode_attention, q, k, v, tables, seq_lens, dim ** -0.5, out=o,
                                     num_splits=splits, tile=tile)
            try:
                graph_ms = graph_timeit(c, call)
            except Exception as exc:  # a shape that does not compile (shared memory) is a finding, not a stop
                out["decode"].append({"batch": batch, "ctx": ctx, "tile": dataclasses.asdict(tile), "splits": splits,
                                      "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            out["decode"].append({"batch": batch, "ctx": ctx, "tile": dataclasses.asdict(tile), "splits": splits,
                                  "graph_ms": graph_ms, "of_copy": kv_bytes / graph_ms / 1e6 / copy_gbs,
                                  "rel_err": rel_err(o, expected)})
        del k, v
    for batch, seqlen in ([(1, 32)] if c.smoke else [(4, 2048), (1, 8192)]):
        k, v, tables, seq_lens = paged_inputs(batch, seqlen, heads, kv_heads, dim, dtype, c.device)
        q = torch.randn(batch * seqlen, heads, dim, dtype=dtype, device=c.device)
        qsl = torch.arange(0, batch * seqlen + 1, seqlen, dtype=torch.int32, device=c.device)
        expected = paged_prefill_attention(q, k, v, tables, qsl, seq_lens, dim ** -0.5, max_query_len=seqlen)
        flops = 4 * batch * heads * dim * seqlen * seqlen / 2
        for tile in PREFILL_SWEEP:
            o = torch.empty_like(q)
            call = functools.partial(paged_prefill_attention, q, k, v, tables, qsl, seq_lens, dim ** -0.5, out=o,
                                     max_query_len=seqlen, tile=tile)
            try:
                ms = c.timeit(call, iters=10)
            except Exception as exc:
                out["prefill"].append({"batch": batch, "seqlen": seqlen, "tile": dataclasses.asdict(tile),
                                       "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            out["prefill"].append({"batch": batch, "seqlen": seqlen, "tile": dataclasses.asdict(tile), "ms": ms,
                                   "tflops": flops / ms / 1e9, "rel_err": rel_err(o, expected)})
        del k, v
    for kind in ("decode", "prefill"):
        for row in out[kind]:
            print(kind, {k: v for k, v in row.items() if k not in ("tile",)}, row["tile"])
    return out


def decode_step_profile(c: Check) -> dict:
    """Where one decode step's time goes (llama-3-8b, batch 64 x 1k, as the roofline section runs
    it): torch.profiler over graphed steps, then eager steps; GPU time per kernel, and the step's
    wall time against the sum of its kernels (the rest is host time and gaps). Diagnostic: opt-in."""
    import os

    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    for eager in (False, True):
        engine = decoding_batch(c, enforce_eager=eager)
        steps = 10
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if c.cuda else [])
        if c.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                engine.step()
            if c.cuda:
                torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t) * 1e3 / steps
        trace_dir = os.environ.get("GPU_CHECK_TRACE_DIR")
        if trace_dir:
            prof.export_chrome_trace(str(Path(trace_dir) / f"decode-step-{'eager' if eager else 'graphed'}.json"))
        kernels: dict[str, list[float]] = {}
        for evt in prof.events():
            if c.cuda and evt.device_type == torch.autograd.DeviceType.CUDA:
                kernels.setdefault(evt.name, []).append(evt.device_time_total / 1e3)
        rows = sorted(((n, sum(ts) / steps, len(ts) / steps) for n, ts in kernels.items()), key=lambda r: -r[1])
        busy = sum(r[1] for r in rows)
        key = "eager" if eager else "graphed"
        out[key] = {"wall_ms_per_step_profiled": wall_ms, "gpu_kernel_ms_per_step": busy,
                    "kernels": [{"name": n[:120], "ms_per_step": ms, "calls_per_step": calls, "share": ms / busy}
                                for n, ms, calls in rows[:25]] if busy else [],
                    "host_top": [{"name": e.key[:80], "cpu_ms_per_step": e.cpu_time_total / 1e3 / steps}
                                 for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]}
        print(f"{key}: wall {wall_ms:.2f} ms/step, kernels {busy:.2f} ms/step")
        for n, ms, calls in rows[:25]:
            print(f"  {ms:8.3f} ms {calls:5.1f}x  {n[:100]}")
        engine.shutdown()
        del engine
        if c.cuda:
            torch.cuda.empty_cache()
    return out


def timed_into(totals: dict, key: str, fn, clock=time.perf_counter):
    """``fn`` wrapped to add its milliseconds on ``clock`` to ``totals[key]``."""
    def wrapper(*args, **kwargs):
        t = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + (clock() - t) * 1e3
    return wrapper


class StepCounters:
    """Per-step deltas of Triton kernel variants built (compiled or loaded from the disk cache) and
    of the memory the CUDA caching allocator reserves (MiB; growth means cudaMalloc calls). Both
    reads are cheap: the first H200 run read ``torch.cuda.memory_stats()`` and scanned the modules
    every step, which put 1.6 ms of host time between steps and inflated the real run's ITL."""

    KEYS = ("kernel_builds", "reserved_mib")

    def __init__(self, cuda: bool) -> None:
        from triton.runtime.jit import JITFunction

        self.cuda = cuda
        self.kernels = [obj for name, module in list(sys.modules.items()) if name.startswith("tunekv.kernels")
                        for obj in list(vars(module).values()) if isinstance(obj, JITFunction)]
        self.last = self.read()

    def read(self) -> dict:
        builds = sum(len(cache[0]) for kernel in self.kernels for cache in kernel.device_caches.values())
        return {"kernel_builds": builds, "reserved_mib": torch.cuda.memory_reserved() / 2**20 if self.cuda else 0.0}

    def delta(self) -> dict:
        now = self.read()
        out = {key: now.get(key, 0) - self.last.get(key, 0) for key in self.KEYS}
        self.last = now
        return out


def simulator_tails(c: Check) -> dict:
    """Why simulated TTFT tails sit below real ones: one real chat run under Poisson load (the
    simulator section's default config), every step's real seconds beside the calibrated cost
    model's prediction, the gaps between steps, the step's parts (schedule, execute with its
    prepare_host inside and the thread's CPU time in it, update) and what it built or allocated
    (``timeline_columns``); the same
    run simulated beside it. Uses the simulator section's calibration when it ran, else calibrates
    briefly. Opt-in."""
    import os
    import tempfile

    os.environ.setdefault("TUNEKV_HOME", tempfile.mkdtemp(prefix="tunekv-gpu-check-"))
    from tunekv.engine.step_cost import StepCostModel
    from tunekv.measure.run import BenchPlan, run_bench
    from tunekv.predict.calibrate import calibrate
    from tunekv.predict.costmodel import Variant, load_calibration, local_device, step_costs
    from tunekv.predict.simulate import simulated_engine
    from tunekv.workload.loadgen import Load
    from tunekv.workload.workloads import load_workload

    model = "tiny-llama" if c.smoke else "qwen3-0.6b"
    mml = 512 if c.smoke else 4096
    config = EngineConfig(model=model, device=c.device.type, max_model_len=mml, max_num_seqs=64 if c.smoke else 256,
                          max_num_batched_tokens=2048 if c.smoke else 8192)
    out: dict = {}
    if "calibration" not in c.result["sections"].get("simulator vs engine", {}):
        cal = calibrate(config, [load_workload("chat"), load_workload("nano-vllm")], 10 if c.smoke else 30)
        out["calibration"] = {"steps": cal.samples, "seconds": cal.seconds, **cal.calibration.describe()}
    engine = LLMEngine(config)
    runner = engine.runner
    key, _, _ = local_device(runner.device)
    calibration = load_calibration(key, Variant.of(engine.config, runner.device.type,
                                                   str(runner.dtype).removeprefix("torch.")))
    assert calibration is not None, "calibrated just before"
    model_cost = StepCostModel(step_costs(engine.model_config, runner.dtype, engine.config.kv_cache_dtype),
                               calibration.params)
    steps: list[tuple[float, float, object, dict]] = []
    parts: dict = {}
    for obj, name, label in ((engine.scheduler, "schedule", "sched_ms"), (runner, "prepare_host", "prep_ms"),
                             (runner, "execute_model", "exec_ms"), (engine.scheduler, "update_from_output", "upd_ms")):
        setattr(obj, name, timed_into(parts, label, getattr(obj, name)))
    # This thread's CPU time in the forward: near exec_ms when the host is the bottleneck, far below
    # it when the thread waits (on the GPU, or descheduled).
    runner.execute_model = timed_into(parts, "exec_cpu_ms", runner.execute_model, time.thread_time)
    counters = StepCounters(c.cuda)

    def observe(f, seconds: float) -> None:
        steps.append((time.perf_counter(), seconds, f, {**parts, **counters.delta()}))
        parts.clear()

    engine.step_observer = observe
    workload = load_workload("chat")
    vocab = engine.model_config.hf_config.vocab_size
    requests = [r for r in workload.requests(0, vocab, None, 16 if c.smoke else 120)
                if len(r.prompt_token_ids) + r.output_len <= mml]
    plan = BenchPlan(workload, requests, 0, len(requests) // 10, None)
    load = Load(rate=4.0 if c.smoke else 24.0)
    result = run_bench(engine, plan, load)
    engine.step_observer = None
    sim = run_bench(simulated_engine(dataclasses.replace(config, num_kv_blocks=engine.num_kv_blocks)), plan, load)
    rows = []
    for i, (end, seconds, f, extra) in enumerate(steps):
        gap = (end - seconds - steps[i - 1][0]) if i else 0.0
        rows.append({"i": i, "start": end - seconds - steps[0][0] + steps[0][1], "ms": seconds * 1e3,
                     "pred_ms": model_cost.predict(f) * 1e3, "gap_ms": gap * 1e3, **dataclasses.asdict(f), **extra})
    mixed = [r for r in rows if r["num_prefills"]]
    decode = [r for r in rows if not r["num_prefills"]]

    def summary(group: list[dict]) -> dict:
        if not group:
            return {}
        ratios = sorted(r["ms"] / r["pred_ms"] for r in group)
        return {"steps": len(group), **{f"{key}_p50": statistics.median(r.get(key, 0.0) for r in group)
                                         for key in ("ms", "sched_ms", "prep_ms", "exec_ms", "exec_cpu_ms",
                                                     "upd_ms")},
                **{f"{key}_sum": sum(r.get(key, 0) for r in group) for key in StepCounters.KEYS},
                "real_s": sum(r["ms"] for r in group) / 1e3,
                "pred_s": sum(r["pred_ms"] for r in group) / 1e3, "ratio_p50": ratios[len(ratios) // 2],
                "ratio_p99": ratios[min(len(ratios) - 1, int(len(ratios) * 0.99))], "ratio_max": ratios[-1],
                "excess_s_over_2x": sum(r["ms"] - r["pred_ms"] for r in group if r["ms"] > 2 * r["pred_ms"]) / 1e3}

    gaps = sorted(r["gap_ms"] for r in rows[1:])
    figures = {"ttft_p50_ms": lambda m: m.ttft_ms.p50, "ttft_p99_ms": lambda m: m.ttft_ms.p99,
               "itl_p50_ms": lambda m: m.itl_ms.p50, "itl_p99_ms": lambda m: m.itl_ms.p99,
               "output_tok_s": lambda m: m.output_throughput_tok_s}
    out.update({
        "metrics": {name: {"real": f(result.metrics), "sim": f(sim.metrics)} for name, f in figures.items()},
        "mixed": summary(mixed), "decode": summary(decode),
        "gaps_ms": {"p50": gaps[len(gaps) // 2], "p99": gaps[int(len(gaps) * 0.99)], "max": gaps[-1],
                    "sum_s": sum(gaps) / 1e3} if gaps else {},
        "worst_steps": sorted(rows, key=lambda r: r["pred_ms"] - r["ms"])[:25],
        "timeline_columns": ["start_s", "ms", "pred_ms", "gap_ms", "seqs", "tokens", "prefills", "sched_ms",
                             "prep_ms", "exec_ms", "exec_cpu_ms", "upd_ms", *StepCounters.KEYS],
        "timeline": [[round(r["start"], 4), round(r["ms"], 3), round(r["pred_ms"], 3), round(r["gap_ms"], 3),
                      r["num_seqs"], r["num_tokens"], r["num_prefills"],
                      *(round(r.get(k, 0.0), 3) for k in ("sched_ms", "prep_ms", "exec_ms", "exec_cpu_ms", "upd_ms")),
                      *(r.get(k, 0) for k in StepCounters.KEYS)] for r in rows]})
    print({k: v for k, v in out.items() if k not in ("worst_steps", "timeline", "calibration")})
    for r in out["worst_steps"][:15]:
        print(r)
    engine.shutdown()
    return out


def eager_step_anatomy(c: Check) -> dict:
    """What an eager (prefill) step costs the host on qwen3-0.6b, by its mix: a one-sequence prefill of
    12 tokens beside 0, 1 and 32 running decodes, each step timed (the median of 8), then cProfile
    over 8 more (the Python functions with the most own time per step); graphed decode steps of the
    same batch timed between them. Opt-in: why the simulator under-predicts mixed steps."""
    import cProfile
    import pstats

    from tunekv.workload.loadgen import warm_up

    model = "tiny-llama" if c.smoke else "qwen3-0.6b"
    engine = LLMEngine(EngineConfig(model=model, device=c.device.type, max_model_len=512 if c.smoke else 4096,
                                    max_num_seqs=64 if c.smoke else 256, max_num_batched_tokens=8192))
    warm_up(engine)
    rng = random.Random(0)
    vocab = engine.model_config.hf_config.vocab_size
    out: dict = {}
    for decodes in (0, 1, 4 if c.smoke else 32):
        for i in range(decodes):
            engine.add_request(f"d{decodes}-{i}", [rng.randrange(vocab) for _ in range(64)],
                               SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True))
        while engine.scheduler.waiting or any(not r.output_token_ids for r in engine.scheduler.running):
            engine.step()
        mixed, decode_only = [], []
        prof = cProfile.Profile()
        for j in range(18):
            engine.add_request(f"p{decodes}-{j}", [rng.randrange(vocab) for _ in range(12)],
                               SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
            t = time.perf_counter()
            if j >= 10:
                prof.enable()
            engine.step()
            if j >= 10:
                prof.disable()
            elif j >= 2:
                mixed.append((time.perf_counter() - t) * 1e3)
            if decodes:
                t = time.perf_counter()
                engine.step()
                decode_only.append((time.perf_counter() - t) * 1e3)
        stats = pstats.Stats(prof)
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:25]  # type: ignore[attr-defined]
        out[f"decodes_{decodes}"] = {
            "mixed_step_ms": statistics.median(mixed),
            "decode_step_ms": statistics.median(decode_only) if decode_only else None,
            "profiled_top": [{"fn": f"{Path(f).name}:{line}:{name}", "calls_per_step": cc / 8,
                              "own_ms_per_step": tt * 1e3 / 8, "cum_ms_per_step": ct * 1e3 / 8}
                             for (f, line, name), (cc, _, tt, ct, _) in top]}
        print(f"decodes {decodes}: mixed step {statistics.median(mixed):.2f} ms, decode step "
              f"{out[f'decodes_{decodes}']['decode_step_ms']}")
        for row in out[f"decodes_{decodes}"]["profiled_top"][:15]:
            print(f"   {row['own_ms_per_step']:7.3f} ms own {row['cum_ms_per_step']:7.3f} cum "
                  f"{row['calls_per_step']:7.1f}x  {row['fn']}")
        for r in list(engine.scheduler.running):
            engine.abort_request(r.request_id)
        while engine.has_unfinished_requests():
            engine.step()
    engine.shutdown()
    return out


FP8_UNQUANTISED_TOL = 0.15  # rel err of attention over an fp8 cache vs the unquantised one (randn K/V): tests/kernels


def fp8_kv_cache(c: Check) -> dict:
    """An fp8 (e4m3) KV cache on the Triton kernels: the write against the torch reference (stored
    bytes), decode and prefill against the reference on the same fp8 cache and against the bf16
    cache, decode time with an fp8 vs a bf16 cache, and the engine end to end with each."""
    dtype = torch.float16 if c.smoke else torch.bfloat16
    heads, kv_heads, dim = SHAPES["llama-3-8b"]
    out: dict = {"write": [], "decode": [], "prefill": [], "timing": []}

    def scalar(x: float) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32, device=c.device)

    gen = torch.Generator(device=c.device).manual_seed(0)
    tokens = 64 if c.smoke else 4096
    raw = torch.randn(2, tokens, kv_heads, dim, generator=gen, device=c.device) * 8
    raw[:, 0, 0, :4] = torch.tensor([1000.0, -1000.0, 449.0, -460.0], device=c.device)  # saturate
    for scale in [1.0, 0.5] + ([] if c.smoke else [0.3]):
        x = raw * scale
        if c.smoke:  # the interpreter's fp32 -> fp8 rounds wrongly: feed values already on the e4m3 grid
            x = quantize_kv(x, FP8_DTYPE, scalar(scale)).float() * scale
        key, value = x.to(dtype)
        slots = torch.randperm(tokens, device=c.device)
        caches = [torch.zeros(tokens // 16, 16, kv_heads, dim, dtype=FP8_DTYPE, device=c.device) for _ in range(4)]
        write_kv_cache(key, value, caches[0], caches[1], slots, k_scale=scalar(scale), v_scale=scalar(scale))
        write_kv_cache_ref(key, value, caches[2], caches[3], slots, k_scale=scalar(scale), v_scale=scalar(scale))
        diff = torch.cat([(caches[i].view(torch.uint8).int() - caches[i + 2].view(torch.uint8).int()).flatten()
                          for i in (0, 1)])
        top = dequantize_kv(caches[0], scalar(scale), torch.float32).abs().max().item()
        out["write"].append({"scale": scale, "bytes_differing": int((diff != 0).sum()), "of": diff.numel(),
                             "max_byte_step": int(diff.abs().max()), "saturated_at": top})
    c.partial("fp8 kv cache", out)
    exact = all(w["bytes_differing"] == 0 for w in out["write"] if math.log2(w["scale"]).is_integer())
    assert exact, f"the fp8 write differs from the reference at a power-of-two scale: {out['write']}"
    # saturated_at is the fp32 product 448 x scale (134.40000915... for 0.3), hence isclose.
    assert all(w["max_byte_step"] <= 1 and math.isclose(w["saturated_at"], FP8_MAX * w["scale"], rel_tol=1e-6)
               for w in out["write"]), \
        f"the fp8 write is off by more than one e4m3 step or does not saturate at 448 x scale: {out['write']}"

    worst_ref = worst_bf16 = worst_abs = 0.0
    batch, ctx = (2, 40) if c.smoke else (16, 1024)
    k, v, tables, seq_lens = paged_inputs(batch, ctx, heads, kv_heads, dim, dtype, c.device)
    seq_lens[0] = max(1, ctx - 7)
    q = torch.randn(batch, heads, dim, dtype=dtype, device=c.device)
    for ks, vs in [(1.0, 1.0), (0.25, 2.0)]:
        k8, v8 = quantize_kv(k, FP8_DTYPE, scalar(ks)), quantize_kv(v, FP8_DTYPE, scalar(vs))
        scales = dict(k_scale=scalar(ks), v_scale=scalar(vs))
        got = paged_decode_attention(q, k8, v8, tables, seq_lens, dim ** -0.5, **scales)
        ref = paged_decode_attention_ref(q.float(), k8, v8, tables, seq_lens, dim ** -0.5, **scales)
        bf16 = paged_decode_attention(q, k, v, tables, seq_lens, dim ** -0.5)
        row = {"k_scale": ks, "v_scale": vs, "batch": batch, "ctx": ctx, "rel_err_vs_ref": rel_err(got, ref),
               "rel_err_vs_bf16_cache": rel_err(got, bf16),
               "max_abs_err_vs_bf16_cache": (got - bf16).abs().max().item()}
        out["decode"].append(row)
        worst_ref, worst_bf16 = max(worst_ref, row["rel_err_vs_ref"]), max(worst_bf16, row["rel_err_vs_bf16_cache"])
        worst_abs = max(worst_abs, row["max_abs_err_vs_bf16_cache"])
    del k, v, k8, v8
    batch, ctx, new = (1, 17, 9) if c.smoke else (2, 512, 256)
    k, v, tables, seq_lens = paged_inputs(batch, ctx + new, heads, kv_heads, dim, dtype, c.device)
    q = torch.randn(batch * new, heads, dim, dtype=dtype, device=c.device)
    qsl = torch.arange(0, batch * new + 1, new, dtype=torch.int32, device=c.device)
    k8, v8 = quantize_kv(k, FP8_DTYPE, scalar(0.5)), quantize_kv(v, FP8_DTYPE, scalar(1.0))
    scales = dict(k_scale=scalar(0.5), v_scale=scalar(1.0))
    got = paged_prefill_attention(q, k8, v8, tables, qsl, seq_lens, dim ** -0.5, **scales)
    ref = paged_prefill_attention_ref(q.float(), k8, v8, tables, qsl, seq_lens, dim ** -0.5, **scales)
    bf16 = paged_prefill_attention(q, k, v, tables, qsl, seq_lens, dim ** -0.5)
    row = {"batch": batch, "ctx": ctx, "new": new, "rel_err_vs_ref": rel_err(got, ref),
           "rel_err_vs_bf16_cache": rel_err(got, bf16), "max_abs_err_vs_bf16_cache": (got - bf16).abs().max().item()}
    out["prefill"].append(row)
    worst_ref, worst_bf16 = max(worst_ref, row["rel_err_vs_ref"]), max(worst_bf16, row["rel_err_vs_bf16_cache"])
    worst_abs = max(worst_abs, row["max_abs_err_vs_bf16_cache"])
    del k, v, k8, v8
    out.update(max_rel_err_vs_ref=worst_ref, max_rel_err_vs_bf16_cache=worst_bf16,
               max_abs_err_vs_bf16_cache=worst_abs)
    c.table.append(("fp8 KV kernels vs bf16 cache", f"max abs {worst_abs:.3f}, rel {worst_bf16:.3f}",
                    f"rel < {FP8_UNQUANTISED_TOL}; vs fp8 ref {worst_ref:.1e} < 2e-2"))
    c.partial("fp8 kv cache", out)
    assert worst_ref < 2e-2, f"fp8 kernels vs the reference on the same cache: {worst_ref}"
    assert worst_bf16 < FP8_UNQUANTISED_TOL, f"fp8 kernels vs the bf16 cache: {worst_bf16}"

    for batch, ctx in ([(2, 32)] if c.smoke else [(32, 1024), (128, 1024), (64, 4096)]):
        k, v, tables, seq_lens = paged_inputs(batch, ctx, heads, kv_heads, dim, dtype, c.device)
        k8, v8 = quantize_kv(k, FP8_DTYPE, scalar(1.0)), quantize_kv(v, FP8_DTYPE, scalar(1.0))
        q = torch.randn(batch, heads, dim, dtype=dtype, device=c.device)
        o = torch.empty_like(q)
        ms = {}
        for name, (kc, vc, extra) in {"bf16": (k, v, {}), "fp8": (k8, v8, {"k_scale": scalar(1.0),
                                                                           "v_scale": scalar(1.0)})}.items():
            ms[name] = graph_timeit(c, functools.partial(paged_decode_attention, q, kc, vc, tables, seq_lens,
                                                         dim ** -0.5, out=o, max_seq_len=ctx, **extra))
        out["timing"].append({"batch": batch, "ctx": ctx, "bf16_ms": ms["bf16"], "fp8_ms": ms["fp8"],
                              "speedup": ms["bf16"] / ms["fp8"],
                              "fp8_gbs": 2 * batch * ctx * kv_heads * dim / ms["fp8"] / 1e6})
        del k, v, k8, v8
    last = out["timing"][1 if len(out["timing"]) > 1 else 0]
    c.table.append(("fp8 KV decode vs bf16 cache (graph)", f"{last['speedup']:.2f}x at b{last['batch']} "
                    f"ctx{last['ctx']}", "bytes read halve"))
    c.partial("fp8 kv cache", out)

    out["engine"] = fp8_engine_run(c)
    return out


def fp8_engine_run(c: Check) -> dict:
    """The engine (CUDA graphs on a GPU) with a bf16 and an fp8 cache in the same KV budget (a
    whole number of bf16 blocks): the fp8 pool has exactly twice the blocks (4x of fp32 in the
    smoke), and both generate every token."""
    name, dtype = ("tiny-llama", torch.float32) if c.smoke else ("qwen3-0.6b", torch.bfloat16)
    n, prompt_len, new = (4, 8, 8) if c.smoke else (32, 256, 64)
    budget = (64 if c.smoke else 512) * 16 * load_model_config(name).kv_bytes_per_token(dtype.itemsize)
    cfg = dict(model=name, device=c.device.type, dtype=str(dtype)[6:], max_model_len=prompt_len + new + 16,
               block_size=16, kv_cache_memory_bytes=budget, max_num_seqs=n)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(prompt_len)] for _ in range(n)]
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    out: dict = {"model": name, "requests": n, "prompt_len": prompt_len, "new": new}
    model = None
    tokens = {}
    for kv in ("auto", "fp8"):
        engine = LLMEngine(EngineConfig(**cfg, kv_cache_dtype=kv), model=model)
        model = engine.model
        # A prompt as long as the timed ones: its prefill tile is compiled here, not in the timed run
        # (the first H200 run of this section timed an fp8 compile: 801 vs 7264 tok/s).
        engine.generate([[1, 2, 3], [2] * prompt_len], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
        t = time.perf_counter()
        outs = engine.generate(prompts, params)
        if c.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        tokens[kv] = [o.output_token_ids for o in outs]
        out[kv] = {"kv_blocks": engine.num_kv_blocks, "cuda_graphs": engine.runner.decode_graphs is not None,
                   "out_tok_s": n * new / wall, "lengths_ok": all(len(t) == new for t in tokens[kv])}
        del engine
    first = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), new) for x, y in zip(tokens["auto"],
                                                                                          tokens["fp8"])]
    out["greedy_agreement_before_divergence"] = sum(first) / (n * new)  # random weights: near-ties, indicative only
    ratio = out["fp8"]["kv_blocks"] / out["auto"]["kv_blocks"]
    out["block_ratio"] = ratio
    c.table.append(("fp8 KV engine: blocks vs bf16 pool", f"{ratio:.2f}x", f"{out['fp8']['out_tok_s']:.0f} vs "
                    f"{out['auto']['out_tok_s']:.0f} tok/s (bf16 cache)"))
    assert out["auto"]["lengths_ok"] and out["fp8"]["lengths_ok"], "every request generates max_tokens"
    assert ratio == (4 if c.smoke else 2), f"the fp8 pool should hold {4 if c.smoke else 2}x the blocks: {ratio}"
    return out


def graph_timeit(c: Check, fn, reps: int = 10) -> float:
    """Milliseconds per call of ``fn`` replayed from a CUDA graph of ``reps`` calls (plain timing on the CPU)."""
    if not c.cuda:
        return c.timeit(fn)
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return c.timeit(graph.replay, iters=20) / reps


def nano_vllm_workload(n: int, lo: int, hi: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(lo, hi))], rng.randint(lo, hi)) for _ in range(n)]


def engine_vs_hf(c: Check, model_name: str) -> dict:
    import transformers

    n, lo, hi = (8, 4, 16) if c.smoke else (128, 100, 512)
    name = "tiny-llama" if c.smoke else model_name
    dtype = torch.float32 if c.smoke else torch.bfloat16
    engine = LLMEngine(EngineConfig(model=name, device=c.device.type, dtype=str(dtype)[6:],
                                    max_model_len=2 * hi + 8, max_num_seqs=256, max_num_batched_tokens=8192))
    vocab = engine.model_config.hf_config.vocab_size
    requests = nano_vllm_workload(n, lo, hi, vocab)
    useful = sum(k for _, k in requests)
    params = [SamplingParams(max_tokens=k, temperature=0.0, ignore_eos=True) for _, k in requests]
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    with NvmlSampler() as nvml:
        t = time.perf_counter()
        engine.generate([p for p, _ in requests], params)
        if c.cuda:
            torch.cuda.synchronize()
        eng_s = time.perf_counter() - t
    out = {"model": name, "requests": n, "useful_output_tokens": useful,
           "tunekv": {"wall_s": eng_s, "out_tok_s": useful / eng_s, "kv_blocks": engine.num_kv_blocks},
           "nvml_during_engine": nvml.peaks()}
    c.partial(f"engine vs hf {model_name}", out)
    hf_config = engine.model_config.hf_config
    del engine
    if c.cuda:
        torch.cuda.empty_cache()

    with torch.device(c.device):
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    for batch in (128, 64):  # transformers' contiguous cache may not fit the whole batch
        try:
            hf_s = hf_static(model, requests, batch, c)
            out["hf_generate_static"] = {"wall_s": hf_s, "out_tok_s": useful / hf_s, "batch": batch}
            break
        except torch.OutOfMemoryError:
            out["hf_generate_static"] = {"error": f"out of memory at batch {batch}"}
            torch.cuda.empty_cache()
        except Exception as exc:
            out["hf_generate_static"] = {"error": f"{type(exc).__name__}: {exc}"}
            break
    c.partial(f"engine vs hf {model_name}", out)
    if c.cuda:
        torch.cuda.empty_cache()
    try:
        out["hf_generate_batch"] = hf_continuous(model, requests, useful, c)
    except Exception as exc:
        out["hf_generate_batch"] = {"error": f"{type(exc).__name__}: {exc}"}
    del model
    if c.cuda:
        torch.cuda.empty_cache()
    ratio = out["hf_generate_batch"].get("wall_s", math.nan) / eng_s
    out["speedup_vs_generate_batch"] = ratio
    out["speedup_vs_generate_static"] = out["hf_generate_static"].get("wall_s", math.nan) / eng_s
    c.table.append((f"engine {name} vs HF generate_batch", f"{ratio:.2f}x", "target >= 3x"))
    c.table.append((f"engine {name} vs HF generate static", f"{out['speedup_vs_generate_static']:.2f}x",
                    f"{useful / eng_s:.0f} tok/s ours"))
    return out


def hf_static(model, requests, batch: int, c: Check) -> float:
    """transformers ``generate`` in static batches (left padding, each batch runs to its longest)."""
    t = time.perf_counter()
    for i in range(0, len(requests), batch):
        if c.left() < 0:
            raise TimeoutError(f"out of budget after {i} of {len(requests)} requests")
        chunk = requests[i:i + batch]
        width = max(len(p) for p, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long, device=c.device)
        mask = torch.zeros_like(ids)
        for j, (p, _) in enumerate(chunk):
            ids[j, width - len(p):] = torch.tensor(p, device=c.device)
            mask[j, width - len(p):] = 1
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max(k for _, k in chunk))
    if c.cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def hf_continuous(model, requests, useful: int, c: Check) -> dict:
    """transformers' continuous batching, each request with its own max_new_tokens."""
    from transformers import GenerationConfig

    gen = GenerationConfig(do_sample=False, max_new_tokens=max(k for _, k in requests), eos_token_id=None,
                           pad_token_id=0)
    t = time.perf_counter()
    with model.continuous_batching_context_manager(generation_config=gen, block=True, timeout=30) as manager:
        ids = [manager.add_request(p, max_new_tokens=k) for p, k in requests]
        done = 0
        while done < len(ids):
            if c.left() < 0:
                raise TimeoutError(f"out of budget after {done} of {len(ids)} requests")
            result = manager.get_result(timeout=5)
            if result is None:
                if not manager.is_running():
                    raise RuntimeError("transformers' continuous batching stopped early")
                continue
            if result.is_finished():
                done += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {"wall_s": seconds, "out_tok_s": useful / seconds}


DECODE_BATCH = {"smoke": ("tiny-llama", "float32", 4, 32), "gpu": ("llama-3-8b", "bfloat16", 64, 1024)}


def decoding_batch(c: Check, enforce_eager: bool = False) -> LLMEngine:
    """An engine in steady decode: ``DECODE_BATCH``'s model with that many requests of that many
    prompt tokens prefilled, a few decode steps taken (graphs replayed unless ``enforce_eager``)."""
    name, dtype, batch, ctx = DECODE_BATCH["smoke" if c.smoke else "gpu"]
    engine = LLMEngine(EngineConfig(model=name, device=c.device.type, dtype=dtype, max_model_len=ctx + 256,
                                    max_num_seqs=batch, max_num_batched_tokens=max(8192, batch),
                                    enforce_eager=enforce_eager))
    rng = random.Random(0)
    vocab = engine.model_config.hf_config.vocab_size
    for i in range(batch):
        engine.add_request(f"r{i}", [rng.randrange(vocab) for _ in range(ctx)],
                           SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True))
    while any(not r.output_token_ids for r in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    for _ in range(3):
        engine.step()
    return engine


def decode_roofline(c: Check) -> dict:
    name, _, batch, ctx = DECODE_BATCH["smoke" if c.smoke else "gpu"]
    engine = decoding_batch(c)
    times = []
    for _ in range(5 if c.smoke else 30):
        if c.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        engine.step()
        if c.cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    step_ms = statistics.median(times)
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
    kv_bytes = batch * (ctx + 20) * engine.runner.kv_bytes_per_token
    copy_gbs = c.result["sections"].get("kernel timings", {}).get("copy_bandwidth_gbs")
    out = {"model": name, "batch": batch, "ctx": ctx, "step_ms": step_ms, "weight_bytes": weight_bytes,
           "kv_bytes": kv_bytes, "cuda_graphs": engine.runner.decode_graphs is not None}
    if copy_gbs:
        roofline_ms = (weight_bytes + kv_bytes) / copy_gbs / 1e6
        out.update(roofline_ms=roofline_ms, ratio=step_ms / roofline_ms)
        c.table.append((f"decode step b{batch} ctx{ctx}", f"{step_ms:.2f} ms = {step_ms / roofline_ms:.2f}x roofline",
                        "target <= 1.5x"))
    return out


PLAN_SCRIPT = """
import json, sys
from tunekv.engine import EngineConfig, LLMEngine
from tunekv.predict.planner import plan_local
cfg = EngineConfig(**json.loads(sys.argv[1]))
if sys.argv[2] == "plan":
    print(json.dumps(plan_local(cfg, "chat", 600.0).to_json()))
else:
    import torch
    engine = LLMEngine(cfg)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)
    print(json.dumps({"blocks": engine.num_kv_blocks, "used_bytes": total - free, "total_bytes": total}))
"""


def planner_check(c: Check) -> dict:
    """`tunekv plan --gpu local` and a fresh engine, each in its own process as a user runs them,
    must count the same blocks; the preset estimate is compared with the measured plan, and the
    memory in use once the engine has started with the budget."""
    import json
    import subprocess
    import tempfile

    from tunekv.hardware.gpus import match_gpu
    from tunekv.predict.planner import plan_for_gpu

    if c.smoke:
        fields = dict(model="tiny-llama", device="cpu", kv_cache_memory_bytes=1 << 22, max_model_len=256)
    else:
        fields = dict(model="qwen3-0.6b", device="cuda", dtype="bfloat16", max_model_len=4096, max_num_seqs=256,
                      max_num_batched_tokens=8192, gpu_memory_utilization=0.9)

    def fresh(kind: str) -> dict:
        # Not from the repository root: its tunekv/ (no engine/) and kernels/ would shadow the shim's.
        done = subprocess.run([sys.executable, "-c", PLAN_SCRIPT, json.dumps(fields), kind], capture_output=True,
                              text=True, timeout=300, cwd=tempfile.gettempdir())
        if done.returncode:
            raise RuntimeError(f"{kind} process failed: {done.stderr[-500:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    plan, engine = fresh("plan"), fresh("engine")
    out = {"plan": plan, "engine_blocks": engine["blocks"], "blocks_equal": plan["num_kv_blocks"] == engine["blocks"]}
    if c.cuda:
        budget = engine["total_bytes"] * fields["gpu_memory_utilization"]
        out.update(used_after_start_bytes=engine["used_bytes"], budget_bytes=budget,
                   over_budget_bytes=engine["used_bytes"] - budget)
        spec = match_gpu(torch.cuda.get_device_name())
        if spec is not None:
            est = plan_for_gpu(EngineConfig(**fields), spec, "chat", 600.0).to_json()
            out["preset_estimate"] = est
            out["estimate_error"] = {k: (est[k] - plan[k]) / max(1, plan[k]) for k in (
                "weights_bytes", "activation_bytes", "cuda_graph_bytes", "other_bytes", "num_kv_blocks")}
    c.table.append(("planner blocks == engine blocks", str(out["blocks_equal"]),
                    f"{plan['num_kv_blocks']} vs {engine['blocks']} (separate processes)"))
    if "over_budget_bytes" in out:
        c.table.append(("memory after start - budget", f"{out['over_budget_bytes'] / 2**20:+.0f} MiB",
                        "<= 0: graphs and activations accounted"))
    if "estimate_error" in out:
        c.table.append(("preset estimate vs measured blocks", f"{out['estimate_error']['num_kv_blocks']:+.1%}",
                        "planner estimate error"))
    return out


def serve_overhead(c: Check) -> dict:
    """`tunekv serve` against the engine in this process, same settings and requests, at 1 and 64
    streaming clients (bench/serve_overhead.py): output tok/s ratio, TTFT and ITL the server adds,
    measured by the script's own client and by `tunekv bench --endpoint`'s.
    Skipped, with the reason recorded, where the server's packages are not installed."""
    import importlib.util

    from bench.serve_overhead import GOAL_CLIENTS, GOAL_RATIO, GPU_SETUP, SERVE_PACKAGES, SMOKE_SETUP, compare_model
    from tunekv.defaults import GPU_MODEL

    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        c.table.append(("serve vs in-process", "skipped", f"not installed: {', '.join(missing)}"))
        return {"skipped": f"tunekv serve needs {', '.join(missing)}, not installed here (put them on PYTHONPATH "
                           "to measure it)"}
    model = "tiny-llama" if c.smoke else GPU_MODEL
    clients = [1, 4] if c.smoke else [1, GOAL_CLIENTS]
    out = compare_model(model, SMOKE_SETUP if c.smoke else GPU_SETUP, clients, rounds=1, device=c.device.type,
                        timeout_s=max(30.0, min(120.0, c.left())))
    for n in clients:
        s = out["levels"][str(n)]["summary"]
        goal = f", goal >= {GOAL_RATIO:.2f}" if n == GOAL_CLIENTS else ""
        c.table.append((f"serve/in-process tok/s, {n} clients", f"{s['ratio']:.2f}x ({s['server_tok_s']:.0f} tok/s)",
                        f"TTFT {s['ttft_added_p50_ms']:+.1f}/{s['ttft_added_p99_ms']:+.1f} ms, ITL "
                        f"{s['itl_added_p50_ms']:+.2f}/{s['itl_added_p99_ms']:+.2f} ms (p50/p99){goal}"))
        c.table.append((f"bench --endpoint/in-process tok/s, {n} clients",
                        f"{s['endpoint_ratio']:.2f}x ({s['endpoint_tok_s']:.0f} tok/s)",
                        f"TTFT {s['endpoint_ttft_added_p50_ms']:+.1f}/{s['endpoint_ttft_added_p99_ms']:+.1f} ms, ITL "
                        f"{s['endpoint_itl_added_p50_ms']:+.2f}/{s['endpoint_itl_added_p99_ms']:+.2f} ms (p50/p99)"))
    return out


def sim_accuracy(c: Check) -> dict:
    """Calibrate on this device, then real vs simulated runs of a few configs (bench/sim_accuracy.py)."""
    import os
    import tempfile

    os.environ["TUNEKV_HOME"] = tempfile.mkdtemp(prefix="tunekv-gpu-check-")
    from bench.sim_accuracy import compare, error_summary
    from tunekv.predict.calibrate import calibrate
    from tunekv.workload.loadgen import Load
    from tunekv.workload.workloads import load_workload

    model = "tiny-llama" if c.smoke else "qwen3-0.6b"
    mml = 512 if c.smoke else 4096
    base = dict(model=model, device=c.device.type, max_model_len=mml, max_num_seqs=64 if c.smoke else 256,
                max_num_batched_tokens=2048 if c.smoke else 8192)
    cal = calibrate(EngineConfig(**base), [load_workload("chat"), load_workload("nano-vllm")], 10 if c.smoke else 50)
    out = {"calibration": {"steps": cal.samples, "seconds": cal.seconds, **cal.calibration.describe()}}
    c.partial("simulator vs engine", out)
    configs = {"default": {}, "seqs32-block32": {"max_num_seqs": 32, "block_size": 32},
               "budget512": {"max_num_batched_tokens": 512}}
    loads = {"chat": Load(rate=4.0 if c.smoke else 24.0), "nano-vllm": Load(concurrency=4 if c.smoke else 64)}
    rows = compare(base, configs, loads, 16 if c.smoke else 120, mml, repeat_real=True)
    worst, median = error_summary(rows)
    out.update(rows=rows, worst_abs_error=worst, median_abs_error=median)
    c.table.append(("simulator: throughput error (worst)", f"{worst['output_throughput_tok_s']:.1%}", "target <= 10%"))
    c.table.append(("simulator: TTFT/ITL p99 error (worst)",
                    f"{worst['ttft_p99_ms']:.1%} / {worst['itl_p99_ms']:.1%}", "target <= 20%"))
    return out


def capacity_accuracy(c: Check) -> dict:
    """Capacity under the SLO, simulated vs measured, and the GPUs each implies for a target load
    (bench/capacity_accuracy.py). Reuses the simulator section's calibration when it ran, else
    calibrates briefly; probes are capped and the section stops starting configs near its end."""
    import os
    import tempfile

    os.environ.setdefault("TUNEKV_HOME", tempfile.mkdtemp(prefix="tunekv-gpu-check-"))
    from bench.capacity_accuracy import capacity_summary, compare_capacity, table
    from tunekv.predict.calibrate import calibrate
    from tunekv.predict.fleet import TargetLoad
    from tunekv.workload.metrics import parse_slo
    from tunekv.workload.workloads import load_workload

    searches_s = 40.0 if c.smoke else 90.0   # real searches start within this; the last probe runs on past it
    model = "tiny-llama" if c.smoke else "qwen3-0.6b"
    mml = 512 if c.smoke else 4096
    base = dict(model=model, device=c.device.type, max_model_len=mml, max_num_seqs=8 if c.smoke else 256,
                max_num_batched_tokens=2048 if c.smoke else 8192)
    workload = load_workload("chat")
    slo_text = "ttft_p99=60s,itl_p99=10s" if c.smoke else "interactive"
    target = TargetLoad.parse("16users" if c.smoke else "256users")
    configs = ({"default": {}, "seqs4": {"max_num_seqs": 4}} if c.smoke else
               {"default": {}, "seqs16": {"max_num_seqs": 16}, "budget512": {"max_num_batched_tokens": 512}})
    out: dict = {"model": model, "slo": slo_text, "target_load": target.describe(), "workload": "chat"}
    sim_section = c.result["sections"].get("simulator vs engine", {})
    if "calibration" in sim_section:
        out["calibration"] = "the simulator section's"
    else:
        cal = calibrate(EngineConfig(**base), [workload], 10 if c.smoke else 30)
        out["calibration"] = {"steps": cal.samples, "seconds": cal.seconds, **cal.calibration.describe()}
    c.partial("capacity accuracy", out)
    began = time.monotonic()

    def stop() -> bool:
        return c.left() < 20 or time.monotonic() - began > searches_s

    rows = compare_capacity(base, configs, workload, parse_slo(slo_text), target, 2.0, 6 if c.smoke else 32,
                            bisections=1, max_requests=8 if c.smoke else 96, stop=stop, progress=print)
    summary = capacity_summary(rows)
    done = {row["config"] for row in rows}
    out.update(rows=rows, summary=summary, not_run=[name for name in configs if name not in done])
    print(table(rows, target))
    gpus = summary["median_abs_gpus_err"]
    cap = summary["median_abs_capacity_err"]
    c.table.append(("capacity: sim vs real (median |err|)",
                    "n/a" if cap is None else f"{cap:.0%} capacity, {gpus:g} GPUs",
                    f"GPU count exact {summary['gpus_exact']}/{summary['compared']} for {target.describe()}"))
    return out


def search_trials(c: Check) -> dict:
    """Real search trials as `tunekv search` runs them (no Optuna needed): one loaded model across
    trials, each starting its capacity search at the simulator's answer, prediction beside
    measurement, and a config too big for memory recorded as infeasible instead of crashing."""
    import os
    import tempfile

    os.environ.setdefault("TUNEKV_HOME", tempfile.mkdtemp(prefix="tunekv-gpu-check-"))
    from tunekv.hardware.gpus import local_gpu_spec
    from tunekv.search.trials import RealRunner, SearchTask, simulate
    from tunekv.workload.loadgen import Load
    from tunekv.workload.metrics import parse_slo
    from tunekv.workload.workloads import load_workload

    model = "tiny-llama" if c.smoke else "qwen3-0.6b"
    workload = load_workload("nano-vllm" if c.smoke else "chat")
    vocab = 512 if c.smoke else 151936
    requests = workload.requests(0, vocab, num_requests=12 if c.smoke else 64)
    slo = parse_slo("ttft_p99=60s,itl_p99=10s" if c.smoke else "interactive")
    mml = 2048 if c.smoke else 4096
    task = SearchTask(workload, requests, slo, Load(concurrency=4) if c.smoke else None, 0, 2 if c.smoke else 6,
                      {"model": model, "dtype": "auto", "seed": 0, "device": c.device.type},
                      local_gpu_spec() if c.cuda else None, None)
    base = {"block_size": 16, "max_model_len": mml, "max_num_seqs": 256, "max_num_batched_tokens": 8192,
            "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1, "enable_chunked_prefill": True,
            "enable_prefix_caching": True, "kv_policy": "paged"}
    points = {"vllm-defaults": base,
              "contiguous-block32": {**base, "block_size": 32, "kv_policy": "contiguous",
                                     "enable_prefix_caching": False, "gpu_memory_utilization": 0.8},
              "no-room": {**base, "gpu_memory_utilization": 0.01}}
    runner = RealRunner(task, mml)
    out: dict = {"trials": {}}
    model_ids = set()
    for name, point in points.items():
        try:
            predicted = simulate(task, point, lambda: False)
        except ValueError as exc:  # no calibration (the simulator section was skipped)
            predicted = None
            out.setdefault("notes", []).append(str(exc))
        outcome = runner.run(point, lambda: c.left() < 30, predicted.capacity if predicted else None)
        if runner._model is not None:
            model_ids.add(id(runner._model))
        out["trials"][name] = {"measured": outcome.to_attrs(),
                               "predicted": None if predicted is None else predicted.to_attrs()}
        feasible = predicted is not None and predicted.feasible
        pred = f"predicted {predicted.value:.0f} tok/s at {predicted.capacity}" if feasible else ""
        c.table.append((f"search trial {name}",
                        f"{outcome.value:.0f} tok/s at {outcome.capacity}" if outcome.feasible else "infeasible",
                        (pred if outcome.feasible else outcome.reason[:60]) + f" ({outcome.seconds:.0f} s)"))
        c.partial("search trials", out)
    out["model_load_seconds"] = runner.load_seconds
    out["model_loaded_once"] = len(model_ids) == 1
    c.table.append(("search: model loaded once", str(out["model_loaded_once"]), f"load {runner.load_seconds:.1f} s"))
    return out


def tensor_parallel(c: Check) -> dict:
    """tp=2 against tp=1 on the same model and workload (needs 2 GPUs; gloo on the CPU with --smoke):
    throughput, KV pool per rank, how many greedy answers agree, and the simulator's tp=2 prediction."""
    gpus = torch.cuda.device_count() if c.cuda else 0
    if c.cuda and gpus < 2:
        return {"skipped": f"this box has {gpus} GPU; tp=2 needs 2"}
    name = "tiny-llama" if c.smoke else "llama-3-8b"
    n, lo, hi = (6, 4, 16) if c.smoke else (128, 100, 512)
    dtype = "float32" if c.smoke else "bfloat16"
    out: dict = {"model": name, "requests": n, "gpus": gpus}
    answers = {}
    for tp in (1, 2):
        cfg = EngineConfig(model=name, device=c.device.type, dtype=dtype, max_model_len=2 * hi + 8, max_num_seqs=256,
                           max_num_batched_tokens=8192, tensor_parallel_size=tp,
                           num_kv_blocks=256 if c.smoke else None)
        with LLMEngine(cfg) as engine:
            requests = nano_vllm_workload(n, lo, hi, engine.model_config.hf_config.vocab_size)
            useful = sum(k for _, k in requests)
            params = [SamplingParams(max_tokens=k, temperature=0.0, ignore_eos=True) for _, k in requests]
            engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
            t = time.perf_counter()
            outs = engine.generate([p for p, _ in requests], params)
            wall = time.perf_counter() - t
            answers[tp] = [o.output_token_ids[:16] for o in outs]
            out[f"tp{tp}"] = {"wall_s": wall, "out_tok_s": useful / wall, "kv_blocks": engine.num_kv_blocks}
        c.partial("tensor parallel", out)
    out["speedup_tp2"] = out["tp1"]["wall_s"] / out["tp2"]["wall_s"]
    out["greedy_first16_agree"] = sum(a == b for a, b in zip(answers[1], answers[2])) / n
    try:
        from tunekv.predict.simulate import simulated_engine

        sim = simulated_engine(dataclasses.replace(cfg, num_kv_blocks=out["tp2"]["kv_blocks"]), None)
        sim.generate([p for p, _ in requests], params)
        out["tp2_predicted_out_tok_s"] = useful / sim.clock.now()
    except ValueError as exc:  # no calibration for this device (the simulator section makes one)
        out["tp2_predicted_out_tok_s"] = f"not predicted: {exc}"
    c.table.append(("tensor parallel tp=2 vs tp=1", f"{out['speedup_tp2']:.2f}x",
                    f"{out['tp2']['out_tok_s']:.0f} tok/s at tp=2; greedy agree {out['greedy_first16_agree']:.0%}"))
    return out


# Run only when --only names them.
DIAGNOSTICS = {"kernel sweep", "decode step profile", "eager step anatomy", "simulator tails"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, to test this script")
    parser.add_argument("--budget-s", type=float, default=450, help="skip heavy sections past this many seconds")
    parser.add_argument("--skip", default="", help="comma-separated section names to skip")
    parser.add_argument("--only", default="", help="comma-separated section names to run (diagnostics included)")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU: run with --smoke to test the script on the CPU", file=sys.stderr)
        return 2
    c = Check(args.smoke, args.budget_s)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    c.result["nvml_before"] = nvml_snapshot()
    sections = [
        ("kernel correctness", lambda: kernel_correctness(c), 0),
        ("kernel timings", lambda: kernel_timings(c), 0),
        ("kernel sweep", lambda: kernel_sweep(c), 0),
        ("decode step profile", lambda: decode_step_profile(c), 60),
        ("eager step anatomy", lambda: eager_step_anatomy(c), 60),
        ("fp8 kv cache", lambda: fp8_kv_cache(c), 30),
        ("decode roofline", lambda: decode_roofline(c), 60),
        ("planner", lambda: planner_check(c), 40),
        ("serve vs in-process", lambda: serve_overhead(c), 90),
        ("simulator vs engine", lambda: sim_accuracy(c), 120),
        ("simulator tails", lambda: simulator_tails(c), 60),
        ("search trials", lambda: search_trials(c), 90),
        ("engine vs hf qwen3-0.6b", lambda: engine_vs_hf(c, "qwen3-0.6b"), 90),
        ("engine vs hf llama-3-8b", lambda: engine_vs_hf(c, "llama-3-8b"), 180),
        ("tensor parallel", lambda: tensor_parallel(c), 120),
        # Last: correctness first; with the time left (or alone: --skip the rest) it sizes fleets.
        ("capacity accuracy", lambda: capacity_accuracy(c), 150),
    ]
    unknown = (skip | only) - {name for name, _, _ in sections}
    if unknown:
        print(f"no section named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    for name, fn, min_left in sections:
        if (name in only) if only else (name not in skip and name not in DIAGNOSTICS):
            c.section(name, fn, min_left)
    c.result["nvml_after"] = nvml_snapshot()
    path = c.save()
    print(f"\n{'check':<40}{'result':<36}note")
    for name, value, note in c.table:
        print(f"{name:<40}{value:<36}{note}")
    print(f"results: {path}  ({time.monotonic() - c.start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
