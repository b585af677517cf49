"""Runs the model for one scheduled step: builds the flat inputs, forwards, samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tunekv.engine.attention import AttentionMetadata, LayerKVCache, get_attention_backend
from tunekv.engine.clock import WallClock
from tunekv.engine.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from tunekv.engine.cuda_graph import DecodeGraphs, capture_sizes
from tunekv.engine.errors import ConfigError, NoKVCacheMemory
from tunekv.engine.kv_cache_manager import cdiv
from tunekv.engine.memory import (
    GIB,
    MemoryProfile,
    describe_device,
    free_bytes,
    kv_cache_itemsize,
    kv_cache_torch_dtype,
    resolve_device,
    resolve_dtype,
)
from tunekv.engine.model_config import ModelConfig
from tunekv.engine.models.llama import LlamaForCausalLM
from tunekv.engine.parallel import TPContext, heads_of_rank
from tunekv.engine.sampler import Sampler
from tunekv.engine.scheduler import SchedulerOutput
from tunekv.engine.weights import init_random_weights, load_weights


@dataclass
class HostStep:
    """One step's model inputs as host arrays: what rank 0 sends to the other tensor-parallel
    ranks, so every rank runs the same forward (sequences ordered decodes first)."""

    input_ids: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    block_tables: np.ndarray  # int32
    seq_lens: np.ndarray
    query_start_loc: np.ndarray
    num_decodes: int
    logits_indices: np.ndarray
    order: list[int]          # model position j holds scheduled request order[j]
    sample_pos: list[int]     # model positions whose last token is sampled


def check_weights_fit(mc: ModelConfig, device: torch.device, dtype: torch.dtype, tp_size: int) -> None:
    """ConfigError, with the numbers, when the weights cannot fit in the memory free now: on the
    CPU an allocation past the RAM is not refused but killed by the kernel, minutes into loading.
    On a GPU a rank holds its slice; on the CPU the ranks share the host's RAM, so all of it counts."""
    needed = mc.num_params * dtype.itemsize // (tp_size if device.type == "cuda" else 1)
    available = free_bytes(device)
    if needed > available:
        where = "each GPU" if device.type == "cuda" else "this machine's RAM"
        raise ConfigError(f"{mc.name}'s weights need {needed / GIB:,.1f} GiB in {str(dtype).removeprefix('torch.')}, "
                          f"more than the {available / GIB:,.1f} GiB free in {where}; use a smaller model, a 16-bit "
                          "dtype or more GPUs (tensor_parallel_size)")


def build_model(config: EngineConfig, mc: ModelConfig, device: torch.device, dtype: torch.dtype,
                tp: TPContext | None = None) -> LlamaForCausalLM:
    """The model (this rank's slice of it under tensor parallelism) with its weights (from
    ``mc.path``, else random with ``config.seed``), its rope table long enough for
    ``config.max_model_len``."""
    assert config.max_model_len is not None
    check_weights_fit(mc, device, dtype, tp.size if tp is not None else 1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(mc.hf_config, mc.num_heads, mc.num_kv_heads, mc.head_dim, config.max_model_len,
                                     tp)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        if mc.path is not None:
            load_weights(model, mc.path)
        else:
            init_random_weights(model, getattr(mc.hf_config, "initializer_range", 0.02), config.seed)
    return model.eval()


def check_unquantized(config: EngineConfig) -> None:
    """ConfigError where ``config.quantization`` is set: only plans, simulations and exports size
    quantized weights."""
    if config.quantization is not None:
        raise ConfigError("tunekv's engine runs unquantized weights; quantization sizes plans, simulations "
                          "and exports")


def check_reusable(model: LlamaForCausalLM, config: EngineConfig, device: torch.device, dtype: torch.dtype) -> None:
    """A model kept loaded across engines (a search's trials) must match the new engine's device,
    dtype and length; ConfigError otherwise."""
    assert config.max_model_len is not None
    weight = model.lm_head.weight
    if model.tp.size != config.tensor_parallel_size:
        raise ConfigError(f"the loaded model is split over {model.tp.size} ranks, the config wants "
                         f"tensor_parallel_size={config.tensor_parallel_size}")
    if weight.device.type != device.type or weight.dtype != dtype:
        raise ConfigError(f"the loaded model is {weight.dtype} on {weight.device}, "
                          f"the config wants {dtype} on {device}")
    positions = model.model.rotary.get_buffer("cos").shape[0]
    if positions < config.max_model_len:
        raise ConfigError(f"the loaded model's rope table covers {positions} positions, fewer than max_model_len "
                         f"({config.max_model_len})")


class ModelRunner:
    """Owns the model, the KV cache tensors, the attention backend and the sampler.

    Block tables live in one persistent array with a row per running request; a step copies only
    the block ids that changed since the last step, so input preparation stays O(batch).
    Under tensor parallelism every rank has one, holding its slice of the model and a cache of
    its KV heads; rank 0's prepares the inputs and samples.
    """

    def __init__(self, config: EngineConfig, model_config: ModelConfig,
                 model: LlamaForCausalLM | None = None, tp: TPContext | None = None) -> None:
        assert config.max_model_len is not None
        check_unquantized(config)
        self.config = config
        self.model_config = model_config
        self.tp = tp = tp or TPContext()
        assert tp.size == config.tensor_parallel_size, "the runner's group must match tensor_parallel_size"
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":  # each rank's process has selected its own GPU
            self.device = torch.device("cuda", torch.cuda.current_device())
        hf = model_config.hf_config
        self.dtype = resolve_dtype(config.dtype, self.device, getattr(hf, "dtype", None))
        self.kv_cache_dtype = kv_cache_torch_dtype(config.kv_cache_dtype, self.dtype)
        self.block_size = config.block_size
        if model is None:
            model = build_model(config, model_config, self.device, self.dtype, tp)
        else:
            check_reusable(model, config, self.device, self.dtype)
        self.model = model
        self.backend = get_attention_backend(config.attention_backend, self.device)
        self.sampler = Sampler(self.device, config.seed)
        self.kv_caches: list[LayerKVCache] = []
        self.max_blocks_per_seq = cdiv(config.max_model_len, config.block_size)
        self._block_table = np.zeros((config.max_num_seqs, self.max_blocks_per_seq), dtype=np.int64)
        self._row_len = [0] * config.max_num_seqs
        self._row_of: dict[str, int] = {}
        self._free_rows = list(range(config.max_num_seqs - 1, -1, -1))
        self.decode_graphs: DecodeGraphs | None = None
        self.clock = WallClock()

    def device_description(self) -> dict[str, Any]:
        return describe_device(self.device, self.dtype)

    def shutdown(self) -> None:
        """Nothing to stop: the model and its cache go with the runner."""

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model_config.kv_bytes_per_token(kv_cache_itemsize(self.config.kv_cache_dtype, self.dtype),
                                                    self.tp.size)

    @property
    def weights_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def profile_memory(self) -> MemoryProfile:
        """How many bytes the KV cache gets: an explicit budget, else (CUDA) the measured free
        memory after a profiling forward at the full token budget and a trial capture of the
        decode graphs, else (CPU) 1 GiB."""
        cfg = self.config
        common = dict(weights_bytes=self.weights_bytes, kv_bytes_per_token=self.kv_bytes_per_token,
                      block_size=cfg.block_size)
        if cfg.kv_cache_memory_bytes is not None:
            return MemoryProfile("kv_cache_memory_bytes", kv_bytes=cfg.kv_cache_memory_bytes, **common)
        if self.device.type != "cuda":
            return MemoryProfile("cpu-default", kv_bytes=DEFAULT_CPU_KV_CACHE_BYTES, **common)
        activation = self._profile_activation_peak()
        graphs = self._profile_cuda_graph_bytes()
        free, total = torch.cuda.mem_get_info(self.device)
        used = total - free
        kv_bytes = total * cfg.gpu_memory_utilization - used - activation - graphs
        return MemoryProfile("profiled", kv_bytes=kv_bytes, total_bytes=total, used_bytes=used,
                             activation_bytes=activation, cuda_graph_bytes=graphs, **common)

    def determine_num_blocks(self) -> int:
        return self.profile_memory().num_blocks

    def initialize_cache(self, num_blocks: int) -> None:
        """Allocate the pool, after checking it fits: an allocation beyond the memory would be
        killed (CPU overcommit) or fail half-way, not refused with the numbers."""
        needed = num_blocks * self.block_size * self.kv_bytes_per_token
        available = free_bytes(self.device)
        if needed > available:
            raise NoKVCacheMemory(f"{num_blocks:,} KV blocks of {self.block_size} need {needed / GIB:,.1f} GiB, more "
                                  f"than the {available / GIB:,.1f} GiB free on {self.device.type}")
        self.allocate_kv_cache(num_blocks)
        self.capture_cuda_graphs()

    @torch.inference_mode()
    def _profile_activation_peak(self) -> int:
        """Peak bytes a forward at ``max_num_batched_tokens`` adds on top of weights and cache."""
        cfg = self.config
        assert cfg.max_num_batched_tokens is not None
        num_tokens = cfg.max_num_batched_tokens
        num_seqs = min(cfg.max_num_seqs, num_tokens)
        lens = [num_tokens // num_seqs + (1 if i < num_tokens % num_seqs else 0) for i in range(num_seqs)]
        blocks_per_seq = [cdiv(n, self.block_size) for n in lens]
        self.allocate_kv_cache(sum(blocks_per_seq))
        tables = np.zeros((num_seqs, max(blocks_per_seq)), dtype=np.int64)
        next_block = 0
        for i, nb in enumerate(blocks_per_seq):
            tables[i, :nb] = np.arange(next_block, next_block + nb)
            next_block += nb
        positions = np.concatenate([np.arange(n) for n in lens])
        seq_idx = np.repeat(np.arange(num_seqs), lens)
        slots = tables[seq_idx, positions // self.block_size] * self.block_size + positions % self.block_size
        qsl = np.concatenate([[0], np.cumsum(lens)])
        torch.cuda.synchronize(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        metadata = self._metadata(slots, tables, np.array(lens), qsl, num_decodes=0)
        input_ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        hidden = self.model(input_ids, self._to_device(positions), self.kv_caches, self.backend, metadata)
        self.model.compute_logits(hidden[self._to_device(qsl[1:] - 1)])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - baseline
        self.kv_caches = []
        torch.cuda.empty_cache()
        return peak

    def _profile_cuda_graph_bytes(self) -> int:
        """Device memory the decode graphs hold (their private pool and static buffers), measured
        by capturing them once against a one-block cache and releasing them."""
        if not self._graphs_wanted():
            return 0
        self.allocate_kv_cache(1)
        torch.cuda.synchronize(self.device)
        # Release what earlier profiling left cached, or the capture reuses it and counts nothing
        # (the first H200 check measured 0 bytes of graphs that way).
        torch.cuda.empty_cache()
        free_before, _ = torch.cuda.mem_get_info(self.device)
        self.capture_cuda_graphs()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # the warm-up forwards' activations are not graph memory
        free_after, _ = torch.cuda.mem_get_info(self.device)
        self.decode_graphs = None
        self.kv_caches = []
        torch.cuda.empty_cache()
        return max(0, free_before - free_after)

    def _graphs_wanted(self) -> bool:
        """CUDA graphs for decode steps, except under tensor parallelism: capturing the group's
        NCCL all-reduces has not been checked on a multi-GPU box yet, so TP runs eagerly."""
        return (self.device.type == "cuda" and not self.config.enforce_eager
                and self.backend.supports_cuda_graphs and self.tp.size == 1)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Each layer's K and V pools in the cache's dtype, with this rank's KV heads only, and
        their scales (1.0: see ``LayerKVCache``)."""
        mc = self.model_config
        shape = (num_blocks, self.block_size, heads_of_rank(mc.num_kv_heads, self.tp)[1], mc.head_dim)

        def pool() -> torch.Tensor:
            return torch.zeros(shape, dtype=self.kv_cache_dtype, device=self.device)

        def one() -> torch.Tensor:
            return torch.ones((), dtype=torch.float32, device=self.device)

        self.kv_caches = [LayerKVCache(pool(), pool(), one(), one()) for _ in range(mc.num_layers)]

    def capture_cuda_graphs(self, capture: bool = True) -> bool:
        """Set up graph replay for decode steps (CUDA, graph-safe backend, not ``enforce_eager``).
        ``capture=False`` builds the same padded static-buffer path without graphs (tests)."""
        if capture and not self._graphs_wanted():
            return False
        assert self.config.max_model_len is not None, "a resolved config has max_model_len"
        self.decode_graphs = DecodeGraphs(
            self.model, self.kv_caches, self.backend, capture_sizes(self.config.max_num_seqs),
            self.max_blocks_per_seq, self.config.max_model_len, self.model_config.hf_config.hidden_size,
            self.dtype, self.device, capture)
        return True

    def _to_device(self, array: np.ndarray, dtype: torch.dtype = torch.long) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _metadata(self, slots: np.ndarray, tables: np.ndarray, seq_lens: np.ndarray, qsl: np.ndarray,
                  num_decodes: int) -> AttentionMetadata:
        query_lens = qsl[1:] - qsl[:-1]
        return AttentionMetadata(
            slot_mapping=self._to_device(slots),
            block_tables=self._to_device(tables, torch.int32),
            seq_lens=self._to_device(seq_lens, torch.int32),
            query_start_loc=self._to_device(qsl, torch.int32),
            num_decodes=num_decodes,
            num_seqs=len(seq_lens),
            max_seq_len=int(seq_lens.max()),
            max_query_len=int(query_lens.max()),
        )

    def release(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            row = self._row_of.pop(rid, None)
            if row is not None:
                self._row_len[row] = 0
                self._free_rows.append(row)

    def _row(self, request_id: str, block_ids: list[int]) -> int:
        row = self._row_of.get(request_id)
        if row is None:
            assert self._free_rows, "more running requests than max_num_seqs"
            row = self._row_of[request_id] = self._free_rows.pop()
        known = self._row_len[row]
        if len(block_ids) != known:
            assert len(block_ids) > known, f"block table of {request_id} shrank without a release"
            self._block_table[row, known:len(block_ids)] = block_ids[known:]
            self._row_len[row] = len(block_ids)
        return row

    def prepare_host(self, out: SchedulerOutput) -> HostStep:
        """Flatten a scheduled step into host arrays of model inputs (decodes first)."""
        self.release(out.released_req_ids)
        reqs, nnew, starts = out.requests, out.num_new_tokens, out.num_computed_before
        n = len(reqs)
        row_of, row_len = self._row_of, self._row_len
        rows: list[int] = []
        sample_pos: list[int] = []
        if sum(nnew) == n:  # decode-only step (the common case): one pass over the requests
            order = list(range(n))
            num_decodes = n
            input_ids = []
            for j, request in enumerate(reqs):
                row = row_of.get(request.request_id)
                if row is None or row_len[row] != len(request.block_ids):
                    row = self._row(request.request_id, request.block_ids)
                rows.append(row)
                tokens = request.token_ids
                pos = starts[j]
                input_ids.append(tokens[pos])
                if pos + 1 == len(tokens):
                    sample_pos.append(j)
            start = np.array(starts, dtype=np.int64)
            count = np.ones(n, dtype=np.int64)
            positions = start
            seq_idx = np.arange(n)
        else:
            decodes = [i for i in range(n) if nnew[i] == 1]
            order = decodes + [i for i in range(n) if nnew[i] != 1]
            num_decodes = len(decodes)
            input_ids = []
            for j, i in enumerate(order):
                request = reqs[i]
                row = row_of.get(request.request_id)
                if row is None or row_len[row] != len(request.block_ids):
                    row = self._row(request.request_id, request.block_ids)
                rows.append(row)
                input_ids.extend(request.token_ids[starts[i]:starts[i] + nnew[i]])
                if starts[i] + nnew[i] == len(request.token_ids):
                    sample_pos.append(j)
            start = np.array([starts[i] for i in order], dtype=np.int64)
            count = np.array([nnew[i] for i in order], dtype=np.int64)
            seq_idx = np.repeat(np.arange(n), count)
            offsets = np.cumsum(count) - count
            positions = np.arange(len(input_ids)) - offsets[seq_idx] + start[seq_idx]
        qsl = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(count, out=qsl[1:])
        seq_lens = start + count
        row_idx = np.array(rows, dtype=np.int64)
        bs = self.block_size
        slots = self._block_table[row_idx[seq_idx], positions // bs] * bs + positions % bs
        tables = self._block_table[row_idx, :cdiv(int(seq_lens.max()), bs)].astype(np.int32)
        return HostStep(np.array(input_ids, dtype=np.int64), positions, slots, tables, seq_lens, qsl, num_decodes,
                        qsl[1:][sample_pos] - 1, order, sample_pos)

    @torch.inference_mode()
    def run_step(self, host: HostStep) -> torch.Tensor | None:
        """Forward one step on this rank; the sampled rows' logits (rank 0; None elsewhere, or
        when no row is sampled)."""
        metadata = self._metadata(host.slot_mapping, host.block_tables, host.seq_lens, host.query_start_loc,
                                  host.num_decodes)
        input_ids, positions = self._to_device(host.input_ids), self._to_device(host.positions)
        graphs = self.decode_graphs
        if graphs is not None and metadata.num_decodes == metadata.num_seqs and graphs.can_run(metadata.num_seqs):
            hidden = graphs.run(input_ids, positions, metadata)
        else:
            hidden = self.model(input_ids, positions, self.kv_caches, self.backend, metadata)
        if not host.sample_pos:
            return None
        return self.model.compute_logits(hidden[self._to_device(host.logits_indices)])

    @torch.inference_mode()
    def sample(self, out: SchedulerOutput, host: HostStep, logits: torch.Tensor | None) -> list[int | None]:
        """The sampled token per scheduled request (None: mid-prompt)."""
        result: list[int | None] = [None] * len(out.requests)
        if logits is None:
            return result
        order = host.order
        tokens = self.sampler(logits, [out.requests[order[j]] for j in host.sample_pos])
        for j, token in zip(host.sample_pos, tokens):
            result[order[j]] = token
        return result

    def execute_model(self, out: SchedulerOutput) -> list[int | None]:
        """Run one step; returns the sampled token per scheduled request (None: mid-prompt)."""
        host = self.prepare_host(out)
        return self.sample(out, host, self.run_step(host))
