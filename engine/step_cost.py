"""What one engine step costs: its work (FLOPs, bytes) from the scheduled batch, and a roofline
time model over that work whose efficiency factors are fitted to the real engine's step times."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from operator import add

from tunekv.engine.model_config import ModelConfig
from tunekv.engine.scheduler import SchedulerOutput


@dataclass(slots=True)
class StepFeatures:
    """The shape of one scheduled step, as the cost model sees it."""

    num_seqs: int
    num_tokens: int
    num_sampled: int      # sequences whose last scheduled token is sampled (decodes, finished prefills)
    context_tokens: int   # KV tokens attention reads: sum of every sequence's length after the step
    attn_pairs: float     # query-key pairs: sum of new * (start + (new + 1) / 2)
    num_prefills: int     # sequences with more than one new token (the step then runs eagerly, no graph)

    def as_list(self) -> list[float]:
        return [self.num_seqs, self.num_tokens, self.num_sampled, self.context_tokens, self.attn_pairs,
                self.num_prefills]


def step_features(sched: SchedulerOutput) -> tuple[StepFeatures, list[bool]]:
    """Features of a step, and which scheduled requests sample a token (call before the step runs).
    Built from C-level map/sum: the simulator calls this every step."""
    news, starts = sched.num_new_tokens, sched.num_computed_before
    ends = list(map(add, starts, news))
    sampled = [end == len(request.token_ids) for request, end in zip(sched.requests, ends)]
    context, num_tokens = sum(ends), sum(news)
    if num_tokens == len(news):  # decodes only: one query each, seeing start + 1 keys
        pairs, prefills = float(context), 0
    else:
        pairs = sum(n * (2 * s + n + 1) for s, n in zip(starts, news)) / 2
        prefills = sum(n > 1 for n in news)
    return StepFeatures(len(news), num_tokens, sampled.count(True), context, pairs, prefills), sampled


@dataclass(frozen=True)
class ModelCosts:
    """Work per unit of a step's features for one model on one tensor-parallel rank, and what
    the ranks exchange (nothing at tp=1)."""

    linear_flops_per_token: float   # 2 x decoder matmul weights
    lm_head_flops_per_row: float    # 2 x hidden x vocab, for each sampled row
    attn_flops_per_pair: float      # 4 x layers x heads x head_dim (QK^T and PV)
    weight_bytes: float             # decoder matmuls and the LM head, streamed once per step
    kv_bytes_per_token: float       # K and V of every layer: read for each context token, written for each new one
    collectives_per_step: int = 0   # all-reduces (2 a layer, 1 for the embedding) and the logits gather
    comm_bytes_per_token: float = 0.0  # ring all-reduce traffic a rank sends, per token of the step
    comm_bytes_per_row: float = 0.0    # the logits gather, per sampled row

    @classmethod
    def from_model(cls, mc: ModelConfig, dtype_bytes: int, tp: int = 1, kv_itemsize: int | None = None) -> ModelCosts:
        """``dtype_bytes``: the weights' and activations' element size; ``kv_itemsize``: the KV
        cache's (``memory.kv_cache_itemsize``; default ``dtype_bytes``, a cache in the model's dtype)."""
        hidden, vocab = mc.hf_config.hidden_size, mc.hf_config.vocab_size
        linear = mc.num_layers * mc.linear_params_per_layer
        all_reduces = 2 * mc.num_layers + 1 if tp > 1 else 0
        ring = 2 * (tp - 1) / tp   # a ring all-reduce sends 2 (tp-1)/tp of the message from every rank
        return cls(
            linear_flops_per_token=2 * linear / tp,
            lm_head_flops_per_row=2 * hidden * vocab / tp,
            attn_flops_per_pair=4 * mc.num_layers * mc.num_heads * mc.head_dim / tp,
            weight_bytes=(linear + hidden * vocab) * dtype_bytes / tp,
            kv_bytes_per_token=mc.kv_bytes_per_token(dtype_bytes if kv_itemsize is None else kv_itemsize, tp),
            collectives_per_step=all_reduces + (1 if tp > 1 else 0),
            comm_bytes_per_token=all_reduces * hidden * dtype_bytes * ring,
            comm_bytes_per_row=vocab * dtype_bytes * (tp - 1) / tp,
        )

    def work(self, f: StepFeatures) -> tuple[float, float, float, float]:
        """(matmul FLOPs, attention FLOPs, weight bytes, KV bytes) of a step."""
        linear = self.linear_flops_per_token * f.num_tokens + self.lm_head_flops_per_row * f.num_sampled
        return (linear, self.attn_flops_per_pair * f.attn_pairs, self.weight_bytes,
                self.kv_bytes_per_token * (f.context_tokens + f.num_tokens))

    def comm_bytes(self, f: StepFeatures) -> float:
        return self.comm_bytes_per_token * f.num_tokens + self.comm_bytes_per_row * f.num_sampled


@dataclass(frozen=True)
class CommCost:
    """The interconnect between tensor-parallel ranks: a fixed latency per collective plus the
    bytes a rank sends over the link's one-direction bandwidth (no overlap with compute: the
    engine waits for each all-reduce before the next layer)."""

    latency_s: float
    bytes_per_s: float

    def seconds(self, costs: ModelCosts, f: StepFeatures) -> float:
        if not costs.collectives_per_step:
            return 0.0
        return costs.collectives_per_step * self.latency_s + costs.comm_bytes(f) / self.bytes_per_s


@dataclass(frozen=True)
class StepCostParams:
    """seconds = overhead_s + mixed_overhead_s x [any prefill] + per_seq_s x seqs
                 + per_prefill_s x prefills
                 + max(matmul FLOPs x s_per_linear_flop, weight bytes x s_per_byte)
                 + max(attention FLOPs x s_per_attn_flop, KV bytes x s_per_byte)

    The matmuls and attention run one after the other, each bound by compute or by memory:
    ``s_per_*_flop`` is 1 / (peak FLOP/s x that kernel's efficiency), ``s_per_byte`` is
    1 / (bandwidth x efficiency), shared because weights and KV stream through the same memory
    (which also separates weight streaming from the host overhead: the weights alone are the
    same every step). The overheads are the host's scheduling and launch time; a step with a
    prefill pays ``mixed_overhead_s`` more (it runs eagerly, not from a CUDA graph, and launches
    the prefill kernels)."""

    overhead_s: float
    mixed_overhead_s: float
    per_seq_s: float
    per_prefill_s: float
    s_per_linear_flop: float
    s_per_attn_flop: float
    s_per_byte: float

    def __post_init__(self) -> None:
        assert min(asdict(self).values()) >= 0, f"step cost parameters must be >= 0: {asdict(self)}"


@dataclass(frozen=True)
class StepCostModel:
    """A model's work costs with the device's fitted parameters: predicts one step's seconds.
    Under tensor parallelism the work is one rank's and ``comm`` adds the collectives."""

    costs: ModelCosts
    params: StepCostParams
    comm: CommCost | None = None

    def __post_init__(self) -> None:
        assert self.comm is not None or not self.costs.collectives_per_step, \
            "a tensor-parallel cost model needs the interconnect's cost"

    def predict(self, f: StepFeatures) -> float:
        linear, attn, weights, kv = self.costs.work(f)
        p = self.params
        host = p.overhead_s + p.per_seq_s * f.num_seqs
        if f.num_prefills:
            host += p.mixed_overhead_s + p.per_prefill_s * f.num_prefills
        comm = self.comm.seconds(self.costs, f) if self.comm is not None else 0.0
        return host + comm + max(linear * p.s_per_linear_flop, weights * p.s_per_byte) + max(
            attn * p.s_per_attn_flop, kv * p.s_per_byte)
