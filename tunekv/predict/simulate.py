"""Simulated engines: the real scheduler and KV cache manager on a virtual clock, each step
charged the calibrated cost model's time, for this device or for a GPU preset.

An fp8 KV cache (``kv_cache_dtype``) sizes the pool and the bytes attention reads at one byte an
element; quantized weights (``quantization``, which tunekv's engine does not run) size the
weights the planner's way and the bytes a step streams (``step_costs``)."""

from __future__ import annotations

import dataclasses

import torch

from tunekv.engine import EngineConfig, LLMEngine
from tunekv.engine.config import DEFAULT_CPU_KV_CACHE_BYTES
from tunekv.engine.llm_engine import MAX_KV_BLOCKS
from tunekv.engine.memory import num_blocks_for_bytes, resolve_device, resolve_dtype
from tunekv.engine.resolve import resolve_config
from tunekv.engine.simulated_executor import SimulatedExecutor
from tunekv.engine.step_cost import StepCostModel
from tunekv.errors import BadInput, DoesNotFit, NoCalibration
from tunekv.hardware.gpus import GpuSpec, comm_cost, gpu_preset, local_gpu_spec
from tunekv.predict.costmodel import (
    Calibration,
    Variant,
    calibration_for_gpu,
    load_calibration,
    local_device,
    step_costs,
)
from tunekv.predict.planner import WEIGHT_FORMATS, plan_for_gpu, plan_local


def simulated_engine(config: EngineConfig, gpu: str | None = None) -> LLMEngine:
    """An engine that simulates ``config`` on ``gpu`` (a preset name; None or "local": this
    device, with its own calibration); its executor's ``device_description()`` says what it
    simulates. NoCalibration when there is nothing to simulate with (a CPU without a calibration),
    DoesNotFit for a config whose KV pool cannot be built, BadInput for what cannot be simulated."""
    cfg, mc = resolve_config(config)
    hf_dtype = getattr(mc.hf_config, "dtype", None)
    if gpu in (None, "local"):
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device, hf_dtype)
        dtype_name = str(dtype).removeprefix("torch.")
        key, name, spec = local_device(device)
        variant = Variant.of(cfg, device.type, dtype_name)
        calibration = load_calibration(key, variant)
        if calibration is None:
            if spec is None:
                kv = "" if cfg.kv_cache_dtype == "auto" else f", {cfg.kv_cache_dtype} KV cache"
                raise NoCalibration(f"there is no step-cost calibration for {mc.name} ({dtype_name}{kv}) on {name}; "
                                 f"run `tunekv calibrate --model {config.model}` first")
            calibration = calibration_for_gpu(spec, variant)
        tp = cfg.tensor_parallel_size
        costs = step_costs(mc, dtype, cfg.kv_cache_dtype, cfg.quantization, tp)
        if tp > 1 and device.type != "cuda":
            raise BadInput("simulating tensor parallelism needs a GPU's interconnect figures; simulate a GPU "
                             "preset instead")
        local = local_gpu_spec() if tp > 1 else None  # this card's memory (and link figures if no preset)
        spec = spec or local
        if cfg.num_kv_blocks:
            blocks = cfg.num_kv_blocks
        elif device.type == "cpu":  # the engine's CPU rule, without building the model
            budget = cfg.kv_cache_memory_bytes or DEFAULT_CPU_KV_CACHE_BYTES
            blocks = num_blocks_for_bytes(budget, int(costs.kv_bytes_per_token), cfg.block_size)
        elif local is not None or cfg.quantization is not None:
            # a measured plan profiles one device and loads unquantized weights: the estimate here
            blocks = plan_for_gpu(cfg, local or local_gpu_spec()).num_kv_blocks
        else:
            blocks = plan_local(cfg).num_kv_blocks
        estimate = tp > 1 or cfg.quantization is not None
    else:
        spec = gpu_preset(gpu)
        name = spec.name
        dtype = resolve_dtype(cfg.dtype, torch.device("cuda"), hf_dtype)
        dtype_name = str(dtype).removeprefix("torch.")
        calibration = calibration_for_gpu(spec, Variant.of(cfg, "cuda", dtype_name))
        costs = step_costs(mc, dtype, cfg.kv_cache_dtype, cfg.quantization, cfg.tensor_parallel_size)
        plan = plan_for_gpu(cfg, spec)
        if not plan.fits and cfg.num_kv_blocks is None:
            raise DoesNotFit(f"{mc.name} does not fit on {spec.key}: {plan.why}")
        blocks = cfg.num_kv_blocks or plan.num_kv_blocks
        estimate = True
    if cfg.num_kv_blocks is None:   # sized from memory: capped as the engine caps its own pool
        blocks = min(blocks, MAX_KV_BLOCKS)
    if blocks < 1:
        block_bytes = int(costs.kv_bytes_per_token) * cfg.block_size
        raise DoesNotFit(f"no KV block fits: {mc.name} needs {block_bytes:,} bytes a block; give the cache more memory")
    comm = comm_cost(spec) if spec is not None and cfg.tensor_parallel_size > 1 else None
    sized = dataclasses.replace(cfg, num_kv_blocks=blocks)
    simulated = _device_block(name, dtype_name, calibration, estimate, cfg.tensor_parallel_size,
                              spec if comm is not None else None)
    if cfg.kv_cache_dtype != "auto":
        simulated["kv_cache_dtype"] = cfg.kv_cache_dtype
    if cfg.quantization is not None:
        bits = float(WEIGHT_FORMATS[cfg.quantization].bits)
        simulated["weights"] = (f"{cfg.quantization}, {bits:g} bits a matmul weight, sized as vLLM loads it "
                                "(tunekv's engine runs unquantized weights)")
    executor = SimulatedExecutor(sized, mc, StepCostModel(costs, calibration.params, comm), simulated)
    return LLMEngine(dataclasses.replace(config, num_kv_blocks=blocks), executor=executor)


def _device_block(name: str, dtype: str, calibration: Calibration, estimate: bool, tp: int,
                  link: GpuSpec | None) -> dict:
    block = {"type": "simulated", "name": name, "dtype": dtype, "tensor_parallel_size": tp,
             "kv_pool": ("estimated per rank from the GPU's memory" if estimate
                         else "as the engine sizes it on this device"),
             "cost_model": calibration.describe()}
    if link is not None:
        block["interconnect"] = {"kind": link.interconnect, "bandwidth_gbs": link.interconnect_bytes_s / 1e9,
                                 "allreduce_latency_us": round(link.allreduce_latency_s * 1e6, 3)}
    return block
