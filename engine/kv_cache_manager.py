from __future__ import annotations

from dataclasses import dataclass

from tunekv.engine.block_pool import BlockHash, BlockPool, KVCacheBlock, hash_block
from tunekv.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class KVStats:
    """A snapshot of the KV pool. ``efficiency`` = tokens stored / tokens reserved."""

    num_blocks: int
    block_size: int
    used_blocks: int
    free_blocks: int
    cached_blocks: int
    tokens_stored: int
    tokens_reserved: int
    prefix_query_tokens: int
    prefix_hit_tokens: int

    @property
    def efficiency(self) -> float:
        return self.tokens_stored / self.tokens_reserved if self.tokens_reserved else 1.0

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0


class KVCacheManager:
    """Maps requests to KV blocks under one of two policies.

    A request's ``block_ids`` and ``num_cached_blocks`` (its leading blocks registered in the
    prefix cache) are kept on the request itself so the per-step fast path is a few attribute
    reads. Tokens stored are the owners' ``num_computed_tokens`` (advanced by the scheduler).

    ``paged``: blocks are taken as tokens arrive, full blocks are shared through the prefix cache.
    ``contiguous``: at admission a request reserves ``ceil(max_model_len / block_size)`` blocks
    (TGI-style pre-allocation); same blocks and kernels, only admission differs.
    """

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int,
                 enable_caching: bool, policy: str = "paged") -> None:
        assert policy in ("paged", "contiguous"), f"unknown kv policy {policy!r}"
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.policy = policy
        self.enable_caching = enable_caching and policy == "paged"
        self.block_pool = BlockPool(num_blocks, self.enable_caching)
        self.reserve_blocks = cdiv(max_model_len, block_size) if policy == "contiguous" else 0
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self._req_hashes: dict[str, list[BlockHash]] = {}
        self._owners: dict[str, Request] = {}
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return self.block_pool.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        """Blocks one request of ``num_tokens`` tokens holds under this policy."""
        return max(cdiv(num_tokens, self.block_size), self.reserve_blocks)

    def _block_hashes(self, request: Request, num_full_blocks: int) -> list[BlockHash]:
        hashes = self._req_hashes.setdefault(request.request_id, [])
        bs = self.block_size
        tokens = request.token_ids
        while len(hashes) < num_full_blocks:
            i = len(hashes)
            hashes.append(hash_block(hashes[-1] if hashes else None, tuple(tokens[i * bs:(i + 1) * bs])))
        return hashes

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest run of cached full blocks at the start of the request's tokens.

        Never covers the last token: its logits are needed, so at least one token is computed.
        """
        if not self.enable_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in self._block_hashes(request, max_blocks):
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count a request's first admission in the prefix-cache hit statistics."""
        if self.enable_caching:
            self.prefix_query_tokens += num_tokens
            self.prefix_hit_tokens += num_hit_tokens

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVCacheBlock] | None = None) -> list[KVCacheBlock] | None:
        """Make room for ``num_new_tokens`` more tokens; None (and no change) if the pool cannot."""
        bs = self.block_size
        if new_computed_blocks is None:
            total = request.num_computed_tokens + num_new_tokens
            if total <= len(request.block_ids) * bs:  # fast path: the tokens fit in held blocks
                if self.enable_caching and total >= (request.num_cached_blocks + 1) * bs:
                    self._cache_full_blocks(request, self.req_to_blocks[request.request_id], total)
                return []
        rid = request.request_id
        blocks = self.req_to_blocks.get(rid)
        computed = new_computed_blocks or []
        held = len(blocks) if blocks is not None else 0
        total = request.num_computed_tokens + len(computed) * bs + num_new_tokens
        assert total <= request.num_tokens, "cannot schedule tokens that are not known yet"
        need = self.blocks_needed(total) - held - len(computed)
        revived = sum(1 for b in computed if b.ref_cnt == 0)
        if need > self.block_pool.get_num_free_blocks() - revived:
            return None
        if blocks is None:
            blocks = self.req_to_blocks[rid] = []
            self._owners[rid] = request
            request.num_cached_blocks = len(computed)
        self.block_pool.touch(computed)
        blocks.extend(computed)
        new_blocks = self.block_pool.get_new_blocks(need) if need > 0 else []
        blocks.extend(new_blocks)
        request.block_ids.extend(b.block_id for b in computed)
        request.block_ids.extend(b.block_id for b in new_blocks)
        if self.enable_caching:
            self._cache_full_blocks(request, blocks, total)
        return new_blocks

    def _cache_full_blocks(self, request: Request, blocks: list[KVCacheBlock], num_tokens: int) -> None:
        start = request.num_cached_blocks
        end = num_tokens // self.block_size
        if end <= start:
            return
        hashes = self._block_hashes(request, end)
        for i in range(start, end):
            self.block_pool.cache_full_block(blocks[i], hashes[i])
        request.num_cached_blocks = end

    def free(self, request: Request) -> None:
        """Release every block of the request, tail first, so tail blocks are evicted first."""
        blocks = self.req_to_blocks.pop(request.request_id, None)
        if blocks:
            self.block_pool.free_blocks(blocks[::-1])
        request.block_ids = []
        request.num_cached_blocks = 0
        self._owners.pop(request.request_id, None)

    def forget(self, request: Request) -> None:
        """Drop per-request hash memo once the request is done for good."""
        self._req_hashes.pop(request.request_id, None)

    def usage(self) -> tuple[int, int]:
        """(tokens stored, tokens reserved) over the requests holding blocks: the KV efficiency
        the load generator samples every step, without building a KVStats."""
        stored = reserved = 0
        for request in self._owners.values():
            stored += request.num_computed_tokens
            reserved += len(request.block_ids)
        return stored, reserved * self.block_size

    def kv_stats(self) -> KVStats:
        pool = self.block_pool
        stored, reserved = self.usage()
        return KVStats(
            num_blocks=pool.num_blocks,
            block_size=self.block_size,
            used_blocks=pool.num_used_blocks,
            free_blocks=pool.get_num_free_blocks(),
            cached_blocks=pool.num_cached_blocks,
            tokens_stored=stored,
            tokens_reserved=reserved,
            prefix_query_tokens=self.prefix_query_tokens,
            prefix_hit_tokens=self.prefix_hit_tokens,
        )
