"""`tunekv plan`: where the GPU's memory goes and how many sequences the KV pool holds.

On the local device the numbers are the engine's own: the planner builds the same model runner
and calls the same ``profile_memory`` (a profiling forward at the full token budget and a trial
capture of the decode graphs), so its block count equals what ``LLMEngine`` allocates for the
same config. For a GPU preset they are an estimate from the model's shapes and the card's
memory, and the plan says so.

Quantized weights (``quantization``) and an fp8 KV cache (``kv_cache_dtype``) are sized here as
vLLM loads them: the decoder's matmul weights at ``WEIGHT_FORMATS``' bits a weight (scales and
zeros included), the embeddings, the LM head and the norms in the model's dtype, and one byte a
KV element. tunekv's engine runs unquantized weights only, so a quantized plan is always an
estimate from the shapes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

import torch

from tunekv.engine import EngineConfig
from tunekv.engine.config import TP_SIZES
from tunekv.engine.kv_cache_manager import cdiv
from tunekv.engine.memory import (
    MemoryProfile,
    kv_cache_itemsize,
    kv_cache_torch_dtype,
    num_blocks_for_bytes,
    resolve_dtype,
)
from tunekv.engine.model_config import ModelConfig
from tunekv.engine.resolve import resolve_config
from tunekv.engine.step_cost import ModelCosts, StepFeatures
from tunekv.errors import BadInput
from tunekv.hardware.gpus import GpuSpec, comm_cost
from tunekv.units import GIB

# CUDA context, cuBLAS/Triton workspaces and the caching allocator's slack, per GPU. An H200
# check measured (used - weights) after start-up; see bench/results/gpu-*.json, "planner".
OTHER_BYTES_ESTIMATE = 1 << 30


@dataclass(frozen=True)
class WeightFormat:
    """How a quantization method stores one matmul weight: its bits, scales and zeros included."""

    bits: Fraction
    layout: str


# Group size 128 for AWQ and GPTQ (their checkpoints' usual q_group_size / group_size): a 4-bit
# weight, and per group of 128 an fp16 scale (16 / 128 bit a weight) and a 4-bit zero point packed
# eight to an int32 (4 / 128); GPTQ's g_idx (one int32 per input row, < 0.01 bit a weight) is left
# out. fp8 and int8 keep one scale per matrix or per output channel, < 0.01 bit a weight at
# hidden sizes >= 4096: left out too.
WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "fp8": WeightFormat(Fraction(8), "8-bit e4m3, a scale per matrix"),
    "int8": WeightFormat(Fraction(8), "8-bit integers, a scale per output channel"),
    "awq": WeightFormat(4 + Fraction(16, 128) + Fraction(4, 128),
                        "4-bit, group 128: an fp16 scale and a packed 4-bit zero a group"),
    "gptq": WeightFormat(4 + Fraction(16, 128) + Fraction(4, 128),
                         "4-bit, group 128: an fp16 scale and a packed 4-bit zero a group"),
}


@dataclass(frozen=True)
class Weights:
    """The weights' bytes on one rank: the decoder's matmuls (quantized or not) and the rest
    (embeddings, LM head, norms, biases: always in the model's dtype)."""

    quantization: str | None            # None: every weight in the model's dtype
    bits_per_weight: float              # of the matmul weights, scales and zeros included
    matmul_bytes: int
    other_bytes: int

    @property
    def total(self) -> int:
        return self.matmul_bytes + self.other_bytes


def weights(mc: ModelConfig, dtype_bytes: int, quantization: str | None, tp: int = 1) -> Weights:
    """What ``mc``'s weights take on each of ``tp`` ranks, quantized as ``quantization`` says
    (the total rounded down once, so unquantized it is ``num_params x dtype bytes / tp``)."""
    matmul = mc.num_layers * mc.linear_params_per_layer
    bits = WEIGHT_FORMATS[quantization].bits if quantization is not None else Fraction(8 * dtype_bytes)
    matmul_bytes = Fraction(matmul) * bits / 8 / tp
    total = int(matmul_bytes + Fraction((mc.num_params - matmul) * dtype_bytes, tp))
    return Weights(quantization, float(bits), int(matmul_bytes), total - int(matmul_bytes))


@dataclass(frozen=True)
class SeqsHeld:
    """How many sequences the KV pool holds at once, at max_model_len and at the workload's mean
    length (None without a workload)."""

    at_max_model_len: int
    at_workload_mean: int | None


@dataclass(frozen=True)
class ByPhase:
    """A figure for a decode step and for a prefill step."""

    decode: float
    prefill: float


@dataclass(frozen=True)
class TpComm:
    """What tensor parallelism adds to a step on a GPU's interconnect (``tunekv plan --tp``)."""

    interconnect: str                   # "nvlink" or "pcie"
    bandwidth_gbs: float
    allreduce_latency_us: float
    allreduces_per_layer: int
    per_layer_us: ByPhase
    per_step_ms: ByPhase
    decode_tokens: int                  # the decode step priced: this many sequences
    prefill_tokens: int                 # the prefill step priced: this many tokens


@dataclass
class Plan:
    """A memory plan: `tunekv plan --json` is its `to_json()` (plus the breakdown behind it)."""

    model: str
    gpu: str
    estimate: bool                      # True: from a preset's specs; False: measured on this device
    tp: int
    dtype: str
    kv_cache_dtype: str                 # what a KV element is stored as: the model's dtype or float8_e4m3fn
    quantization: str | None            # the matmul weights' format (None: the model's dtype)
    bits_per_weight: float              # of the matmul weights, scales and zeros included
    gpu_memory_bytes: int | None
    gpu_memory_utilization: float
    weights_bytes: int
    matmul_weights_bytes: int           # the decoder's matmuls, what quantization shrinks (part of weights_bytes)
    activation_bytes: int
    cuda_graph_bytes: int
    other_bytes: int                    # CUDA context, libraries, other processes
    kv_bytes_per_token: int
    free_for_kv_bytes: int
    num_kv_blocks: int
    block_size: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    workload: str | None
    workload_mean_tokens: float | None
    max_concurrent_seqs: SeqsHeld       # what the KV pool holds, paged ...
    max_concurrent_seqs_contiguous: SeqsHeld  # ... and reserving max_model_len (max_num_seqs may cap either)
    fits: bool
    why: str
    min_tp: int | None                  # the smallest tensor-parallel size that fits (None: not even 8)
    tp_comm: TpComm | None = None       # tp > 1: the interconnect and what its all-reduces cost

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def plan_local(config: EngineConfig, workload: str | None = None, workload_mean: float | None = None) -> Plan:
    """Measure on this machine exactly as ``LLMEngine(config)`` would (builds the model runner)."""
    from tunekv.engine.model_runner import ModelRunner

    if config.quantization is not None:
        raise BadInput(f"a measured plan loads the model's own weights, which tunekv's engine runs unquantized; "
                       f"plan {config.quantization} weights against a GPU preset (--gpu)")
    config, mc = resolve_config(config)
    if config.tensor_parallel_size != 1:
        raise BadInput("a measured plan runs on one device; use a GPU preset (--gpu) to plan tp > 1")
    runner = ModelRunner(config, mc)
    try:
        profile = runner.profile_memory()
        device = runner.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({profile.source})"
        dtype = str(runner.dtype).removeprefix("torch.")
        kv_dtype = str(kv_cache_torch_dtype(config.kv_cache_dtype, runner.dtype)).removeprefix("torch.")
        matmul = mc.num_layers * mc.linear_params_per_layer * runner.dtype.itemsize
        held = Weights(None, 8.0 * runner.dtype.itemsize, matmul, profile.weights_bytes - matmul)
    finally:
        del runner
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return _plan_from_profile(config, mc, profile, held, name, dtype, kv_dtype, workload, workload_mean)


def _plan_from_profile(config: EngineConfig, mc: ModelConfig, profile: MemoryProfile, held: Weights, gpu: str,
                       dtype: str, kv_dtype: str, workload: str | None, workload_mean: float | None) -> Plan:
    other = 0 if profile.used_bytes is None else profile.used_bytes - profile.weights_bytes
    plan = _assemble(config, mc, gpu=gpu, estimate=False, dtype=dtype, kv_dtype=kv_dtype,
                     memory=profile.total_bytes, weights=held, activation=profile.activation_bytes,
                     graphs=profile.cuda_graph_bytes, other=max(0, other), kv_bytes=profile.kv_bytes,
                     kv_per_token=profile.kv_bytes_per_token, workload=workload, workload_mean=workload_mean)
    assert plan.num_kv_blocks == max(0, profile.num_blocks), "the plan must count the engine's blocks"
    return plan


def plan_for_gpu(config: EngineConfig, gpu: GpuSpec, workload: str | None = None,
                 workload_mean: float | None = None) -> Plan:
    """Estimate for a GPU preset from the model's shapes (per tensor-parallel rank)."""
    config, mc = resolve_config(config)
    return _estimate(config, mc, gpu, config.tensor_parallel_size, workload, workload_mean, search_tp=True)


def _estimate(config: EngineConfig, mc: ModelConfig, gpu: GpuSpec, tp: int, workload: str | None,
              workload_mean: float | None, search_tp: bool) -> Plan:
    dtype = resolve_dtype(config.dtype, torch.device("cuda"), getattr(mc.hf_config, "dtype", None))
    nbytes = dtype.itemsize
    held = weights(mc, nbytes, config.quantization, tp)
    assert config.max_num_batched_tokens is not None
    tokens = config.max_num_batched_tokens
    activation = activation_estimate(mc, tokens, min(config.max_num_seqs, tokens), nbytes, tp)
    graphs = 0
    if not config.enforce_eager:
        blocks_per_seq = cdiv(config.max_model_len or 1, config.block_size)
        bs = config.max_num_seqs
        graphs = bs * blocks_per_seq * 4 + bs * mc.hf_config.hidden_size * nbytes + activation_estimate(
            mc, bs, 0, nbytes, tp)
    kv_bytes = (gpu.memory_bytes * config.gpu_memory_utilization - held.total - activation - graphs
                - OTHER_BYTES_ESTIMATE)
    kv_dtype = str(kv_cache_torch_dtype(config.kv_cache_dtype, dtype)).removeprefix("torch.")
    kv_per_token = mc.kv_bytes_per_token(kv_cache_itemsize(config.kv_cache_dtype, dtype), tp)
    plan = _assemble(config, mc, gpu=gpu.key, estimate=True, dtype=str(dtype).removeprefix("torch."),
                     kv_dtype=kv_dtype, memory=gpu.memory_bytes, weights=held, activation=activation, graphs=graphs,
                     other=OTHER_BYTES_ESTIMATE, kv_bytes=kv_bytes, kv_per_token=kv_per_token,
                     workload=workload, workload_mean=workload_mean, tp=tp)
    if tp > 1:
        plan.tp_comm = tp_comm(mc, gpu, tp, nbytes, config.max_num_seqs, tokens)
    if search_tp and not plan.fits:
        plan.min_tp = next((t for t in TP_SIZES if t > tp and mc.tp_problem(t) is None and _estimate(
            dataclasses.replace(config, tensor_parallel_size=t), mc, gpu, t, workload, workload_mean, False).fits),
            None)
        if plan.min_tp is not None:
            plan.why += f"; needs tp >= {plan.min_tp}"
    return plan


def tp_comm(mc: ModelConfig, gpu: GpuSpec, tp: int, dtype_bytes: int, decode_tokens: int,
            prefill_tokens: int) -> TpComm:
    """What tensor parallelism adds to a step on ``gpu``'s interconnect: two all-reduces of the
    hidden states a layer (after attention and after the MLP), for a decode step of
    ``decode_tokens`` sequences and a prefill step of ``prefill_tokens`` tokens; the simulator
    charges the same (``CommCost``)."""
    costs = ModelCosts.from_model(mc, dtype_bytes, tp)
    comm = comm_cost(gpu)
    per_all_reduce = costs.comm_bytes_per_token / (2 * mc.num_layers + 1)   # bytes a rank sends, per token

    def per_layer_us(tokens: int) -> float:
        return 2 * (comm.latency_s + tokens * per_all_reduce / comm.bytes_per_s) * 1e6

    decode = StepFeatures(decode_tokens, decode_tokens, decode_tokens, decode_tokens, decode_tokens, 0)
    prefill = StepFeatures(1, prefill_tokens, 1, prefill_tokens, prefill_tokens, 1)
    return TpComm(gpu.interconnect, gpu.interconnect_bytes_s / 1e9, round(gpu.allreduce_latency_s * 1e6, 3), 2,
                  ByPhase(per_layer_us(decode_tokens), per_layer_us(prefill_tokens)),
                  ByPhase(comm.seconds(costs, decode) * 1e3, comm.seconds(costs, prefill) * 1e3),
                  decode_tokens, prefill_tokens)


def activation_estimate(mc: ModelConfig, num_tokens: int, num_logit_rows: int, dtype_bytes: int, tp: int) -> int:
    """Peak transient bytes of one forward over ``num_tokens`` tokens: the residual stream and the
    wider of the attention and MLP intermediates, plus the logits of the sampled rows."""
    hf = mc.hf_config
    hidden, inter = hf.hidden_size, hf.intermediate_size
    attention = (mc.num_heads + 2 * mc.num_kv_heads) * mc.head_dim * 2 / tp
    mlp = 3 * inter / tp
    per_token = 2 * hidden + max(attention, mlp)
    return int(num_tokens * per_token * dtype_bytes + num_logit_rows * hf.vocab_size / tp * dtype_bytes)


def _assemble(config: EngineConfig, mc: ModelConfig, *, gpu: str, estimate: bool, dtype: str, kv_dtype: str,
              memory: int | None, weights: Weights, activation: int, graphs: int, other: int, kv_bytes: float,
              kv_per_token: int, workload: str | None, workload_mean: float | None, tp: int = 1) -> Plan:
    assert config.max_model_len is not None and config.max_num_batched_tokens is not None
    bs, mml = config.block_size, config.max_model_len
    blocks = num_blocks_for_bytes(kv_bytes, kv_per_token, bs)
    per_max = cdiv(mml, bs)
    at_mean = None if workload_mean is None else blocks // cdiv(max(1, round(workload_mean)), bs)
    contiguous = blocks // per_max
    fits, why = _fits(memory, config.gpu_memory_utilization, weights, activation, graphs, other, blocks, bs, mml)
    return Plan(
        model=mc.name, gpu=gpu, estimate=estimate, tp=tp, dtype=dtype, kv_cache_dtype=kv_dtype,
        quantization=weights.quantization, bits_per_weight=weights.bits_per_weight, gpu_memory_bytes=memory,
        gpu_memory_utilization=config.gpu_memory_utilization, weights_bytes=weights.total,
        matmul_weights_bytes=weights.matmul_bytes, activation_bytes=activation,
        cuda_graph_bytes=graphs, other_bytes=other, kv_bytes_per_token=kv_per_token,
        free_for_kv_bytes=max(0, int(kv_bytes)), num_kv_blocks=blocks, block_size=bs, max_model_len=mml,
        max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens, workload=workload,
        workload_mean_tokens=workload_mean,
        max_concurrent_seqs=SeqsHeld(contiguous, at_mean),
        max_concurrent_seqs_contiguous=SeqsHeld(contiguous, None if workload_mean is None else contiguous),
        fits=fits, why=why, min_tp=tp if fits else None)


def _fits(memory: int | None, util: float, held: Weights, activation: int, graphs: int, other: int,
          blocks: int, block_size: int, max_model_len: int) -> tuple[bool, str]:
    pool_tokens = blocks * block_size
    weights = held.total
    if memory is not None:
        budget = memory * util
        where = f"{memory / GIB:.1f} GiB x {util:.2f} = {budget / GIB:.1f} GiB"
        if weights > budget:
            what = f"weights ({held.quantization})" if held.quantization else "weights"
            return False, f"{what} {weights / GIB:.1f} GiB > {where}"
        if blocks == 0:
            return False, (f"weights {weights / GIB:.1f} GiB + activations {activation / GIB:.1f} GiB + CUDA graphs "
                           f"{graphs / GIB:.2f} GiB + other {other / GIB:.1f} GiB leave no room for the KV cache "
                           f"in {where}")
    if blocks * block_size < max_model_len:
        return False, (f"the KV pool holds {pool_tokens:,} tokens, fewer than one max_model_len sequence "
                       f"({max_model_len:,}); lower max_model_len to <= {pool_tokens:,} or give the cache more memory")
    return True, f"{blocks:,} blocks of {block_size} = {pool_tokens:,} KV tokens"
