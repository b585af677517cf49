from __future__ import annotations

import hashlib
import os
from array import array

BlockHash = bytes
"""SHA-256 over the parent block's hash and this block's token ids: equal hash means equal
prefix, also against prompts crafted to collide (Python's ``hash`` can be collided offline)."""

_ROOT = os.urandom(16)  # per process, so hashes cannot be precomputed from outside


def hash_block(parent: BlockHash | None, token_ids: tuple[int, ...]) -> BlockHash:
    h = hashlib.sha256(parent if parent is not None else _ROOT)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class KVCacheBlock:
    """One block of the paged KV cache. ``prev_free``/``next_free`` link it into the free queue."""

    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None
        self.prev_free: KVCacheBlock | None = None
        self.next_free: KVCacheBlock | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(id={self.block_id}, ref_cnt={self.ref_cnt}, cached={self.block_hash is not None})"


class FreeKVCacheBlockQueue:
    """Doubly linked list of free blocks in eviction order (least recently freed first).

    Every operation is O(1), including removing a block from the middle when a prefix-cache hit
    revives a cached-but-free block.
    """

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self._head = KVCacheBlock(-1)
        self._tail = KVCacheBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free_blocks = 0
        for block in blocks:
            self.append(block)

    def popleft(self) -> KVCacheBlock:
        block = self._head.next_free
        assert block is not None and block is not self._tail, "no free block to pop"
        self.remove(block)
        return block

    def remove(self, block: KVCacheBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None, f"block {block.block_id} is not in the free queue"
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self.num_free_blocks -= 1

    def append(self, block: KVCacheBlock) -> None:
        assert block.prev_free is None and block.next_free is None, f"block {block.block_id} is already free"
        last = self._tail.prev_free
        assert last is not None
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free_blocks += 1

    def block_ids(self) -> list[int]:
        out = []
        node = self._head.next_free
        while node is not self._tail:
            assert node is not None
            out.append(node.block_id)
            node = node.next_free
        return out


class BlockPool:
    """All KV blocks, their reference counts, the free queue and the prefix-cache map.

    A block with ``ref_cnt == 0`` is free; if it still has a ``block_hash`` its contents stay
    reusable until the block is popped for new data (lazy eviction).

    Blocks are made on first use: ``blocks`` holds ids ``0 .. len(blocks) - 1``, and the ids above
    them, never used, are free and come first in eviction order, ahead of ``free_block_queue`` (as
    if every block had been queued in id order at the start). A simulated pool on a large card holds
    millions of blocks; making them all took seconds per simulated config.
    """

    def __init__(self, num_blocks: int, enable_caching: bool) -> None:
        assert num_blocks > 0, "a block pool needs at least one block"
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks: list[KVCacheBlock] = []
        self.free_block_queue = FreeKVCacheBlockQueue([])
        self.cached_block_hash_to_block: dict[BlockHash, KVCacheBlock] = {}

    @property
    def num_unused_blocks(self) -> int:
        """Blocks never handed out yet (free, and first to be handed out)."""
        return self.num_blocks - len(self.blocks)

    def get_num_free_blocks(self) -> int:
        return self.num_unused_blocks + self.free_block_queue.num_free_blocks

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.get_num_free_blocks()

    def free_block_ids(self) -> list[int]:
        """Every free block's id in the order they are handed out (O(num_blocks): for tests)."""
        return list(range(len(self.blocks), self.num_blocks)) + self.free_block_queue.block_ids()

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached_block_hash_to_block)

    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        return self.cached_block_hash_to_block.get(block_hash)

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        assert num_blocks <= self.get_num_free_blocks(), (
            f"asked for {num_blocks} blocks with {self.get_num_free_blocks()} free"
        )
        out = []
        for _ in range(num_blocks):
            if self.num_unused_blocks:
                block = KVCacheBlock(len(self.blocks))
                self.blocks.append(block)
            else:
                block = self.free_block_queue.popleft()
            if block.block_hash is not None:
                del self.cached_block_hash_to_block[block.block_hash]
                block.block_hash = None
            assert block.ref_cnt == 0, f"free block {block.block_id} has ref_cnt {block.ref_cnt}"
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        """Take a reference on prefix-cache hits, reviving them from the free queue if needed."""
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_block_queue.remove(block)
            block.ref_cnt += 1

    def cache_full_block(self, block: KVCacheBlock, block_hash: BlockHash) -> None:
        """Register a block whose tokens are complete. A duplicate of an already-cached block
        (two requests computed the same prefix at once) stays uncached and is freed normally."""
        if block.block_hash is not None or block_hash in self.cached_block_hash_to_block:
            return
        block.block_hash = block_hash
        self.cached_block_hash_to_block[block_hash] = block

    def free_blocks(self, ordered_blocks: list[KVCacheBlock]) -> None:
        """Drop one reference each; blocks reaching zero join the free queue in the given order."""
        for block in ordered_blocks:
            assert block.ref_cnt > 0, f"double free of block {block.block_id}"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_block_queue.append(block)

    def reset_prefix_cache(self) -> None:
        for block in self.cached_block_hash_to_block.values():
            block.block_hash = None
        self.cached_block_hash_to_block.clear()
