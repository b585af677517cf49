"""Decode steps replayed from CUDA graphs, one graph per padded batch size.

A decode-only step of ``n`` sequences runs the graph of the smallest captured size ``>= n``;
rows past ``n`` are padding: slot -1 (no KV write), seq_len 0 (zero attention output), token 0.
Every captured launch depends only on static shapes, so the Triton decode kernel's split count
is fixed from ``max_model_len`` at capture time.
"""

from __future__ import annotations

import torch

from tunekv.engine.attention import AttentionMetadata


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 16))
    return sorted(set(sizes + [max_num_seqs]))


class DecodeGraphs:
    """Static input buffers plus a graph per size. With ``capture=False`` the same padded,
    static-buffer path runs eagerly (how the padding logic is tested without a GPU)."""

    def __init__(self, model: torch.nn.Module, kv_caches: list, backend, sizes: list[int], max_blocks_per_seq: int,
                 max_model_len: int, hidden_size: int, dtype: torch.dtype, device: torch.device,
                 capture: bool) -> None:
        self.model, self.kv_caches, self.backend = model, kv_caches, backend
        self.sizes = sizes
        max_bs = sizes[-1]
        self.input_ids = torch.zeros(max_bs, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_bs, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((max_bs,), -1, dtype=torch.long, device=device)
        self.block_tables = torch.zeros(max_bs, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(max_bs, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.hidden = torch.zeros(max_bs, hidden_size, dtype=dtype, device=device)
        self.max_model_len = max_model_len
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if capture:
            self._capture()

    def _metadata(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slot_mapping[:bs], block_tables=self.block_tables[:bs],
                                 seq_lens=self.seq_lens[:bs], query_start_loc=self.query_start_loc[:bs + 1],
                                 num_decodes=bs, num_seqs=bs, max_seq_len=self.max_model_len, max_query_len=1)

    def _forward(self, bs: int) -> None:
        self.hidden[:bs] = self.model(self.input_ids[:bs], self.positions[:bs], self.kv_caches, self.backend,
                                      self._metadata(bs))

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        for bs in reversed(self.sizes):
            self._forward(bs)  # warm-up: compiles kernels outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self._forward(bs)
            pool = graph.pool()
            self.graphs[bs] = graph
            torch.cuda.synchronize()

    def can_run(self, num_seqs: int) -> bool:
        return num_seqs <= self.sizes[-1]

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        n = metadata.num_seqs
        assert metadata.num_decodes == n and self.can_run(n), "graphs serve decode-only steps that fit"
        bs = next(b for b in self.sizes if b >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(metadata.slot_mapping)
        self.slot_mapping[n:bs].fill_(-1)
        self.seq_lens[:n].copy_(metadata.seq_lens)
        self.seq_lens[n:bs].zero_()
        width = metadata.block_tables.shape[1]
        self.block_tables[:n, :width].copy_(metadata.block_tables)
        graph = self.graphs.get(bs)
        if graph is not None:
            graph.replay()
        else:
            self._forward(bs)
        return self.hidden[:n]
