"""Simulated engines: the real scheduler and KV cache manager on a virtual clock, each step
charged the calibrated cost model's time, for this device or for a GPU preset."""

from __future__ import annotations

import dataclasses

import torch

from tunekv import __version__
from tunekv.costmodel import Calibration, calibration_for_gpu, load_calibration, local_device
from tunekv.engine import EngineConfig, LLMEngine
from tunekv.engine.llm_engine import resolve_config
from tunekv.engine.memory import resolve_device, resolve_dtype
from tunekv.engine.step_cost import ModelCosts, StepCostModel
from tunekv.gpus import gpu_preset
from tunekv.planner import plan_for_gpu, plan_local


def simulated_engine(config: EngineConfig, gpu: str | None = None) -> tuple[LLMEngine, dict]:
    """An engine that simulates ``config`` on ``gpu`` (a preset name; None or "local": this
    device, with its own calibration), and the result JSON's ``device`` block describing it.
    ValueError when there is nothing to simulate with (no calibration for a CPU, a config that
    does not fit)."""
    cfg, mc = resolve_config(config)
    hf_dtype = getattr(mc.hf_config, "dtype", None)
    if gpu in (None, "local"):
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device, hf_dtype)
        key, name, spec = local_device()
        dtype_name = str(dtype).removeprefix("torch.")
        calibration = load_calibration(key, mc.name, dtype_name)
        if calibration is None:
            if spec is None or device.type != "cuda":
                raise ValueError(f"there is no step-cost calibration for {mc.name} ({dtype_name}) on {name}; "
                                 f"run `tunekv calibrate --model {config.model}` first")
            calibration = calibration_for_gpu(spec, mc.name, dtype_name)
        blocks = cfg.num_kv_blocks or plan_local(cfg).num_kv_blocks
        estimate = False
    else:
        spec = gpu_preset(gpu)
        name = spec.name
        dtype = resolve_dtype(cfg.dtype, torch.device("cuda"), hf_dtype)
        dtype_name = str(dtype).removeprefix("torch.")
        calibration = calibration_for_gpu(spec, mc.name, dtype_name)
        plan = plan_for_gpu(cfg, spec)
        if not plan.fits and cfg.num_kv_blocks is None:
            raise ValueError(f"{mc.name} does not fit on {spec.key}: {plan.why}")
        blocks = cfg.num_kv_blocks or plan.num_kv_blocks
        estimate = True
    costs = ModelCosts.from_model(mc, dtype.itemsize, cfg.tensor_parallel_size)
    engine = LLMEngine(dataclasses.replace(config, num_kv_blocks=blocks), StepCostModel(costs, calibration.params))
    return engine, _device_block(name, dtype_name, calibration, estimate)


def _device_block(name: str, dtype: str, calibration: Calibration, estimate: bool) -> dict:
    return {"type": "simulated", "name": name, "dtype": dtype, "tunekv": __version__,
            "kv_pool": "estimated from the GPU preset" if estimate else "as the engine sizes it on this device",
            "cost_model": calibration.describe()}
