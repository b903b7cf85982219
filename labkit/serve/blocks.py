"""Bookkeeping for a paged KV cache: which fixed-size block holds which sequence's keys and values.

The cache itself (a tensor of `num_blocks * block_size` slots per layer) belongs to the model runner; this
module only hands out block ids, counts references and maps token positions to slots, so it is tested
without a model. Paging is why continuous batching does not waste memory: a sequence holds
`ceil(tokens / block_size)` blocks instead of a max-length slab, and a finished one returns them at once.

Prefix caching (optional): a block that is full and whose KV has been computed is published under a hash of
its tokens chained with the hash of the block before it, so the hash names the whole prefix. A later
sequence with the same prefix reuses the block (reference count + 1) instead of recomputing it. A freed
block keeps its hash on the free list and can be revived until it is handed out again; the free list is
least-recently-freed first, so popular prefixes survive longest.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from labkit.serve.sequence import Sequence

_ROOT_HASH = 0  # the "parent" of a sequence's first block (an int: hashes of ints and tuples are deterministic)


@dataclass
class Block:
    """One block of `block_size` KV slots. `hash` is set only while it holds a published full block."""

    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


class BlockManager:
    """Free list + reference counts (+ optional prefix cache). Slot `s` is block `s // block_size`,
    offset `s % block_size`: the runner writes token position `p` of a sequence to `slot(seq, p)`."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # An ordered set: O(1) removal when a cached free block is revived, oldest-freed handed out first.
        self.free_block_ids: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block_id: dict[int, int] = {}

    # ------------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` tokens."""
        return math.ceil(num_tokens / self.block_size)

    def slot(self, seq: Sequence, position: int) -> int:
        """The KV-cache slot of token `position` of `seq`."""
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def slot_mapping(self, seq: Sequence, start: int, end: int) -> list[int]:
        """Slots of positions `[start, end)`: where the runner stores the keys/values it computes."""
        return [self.slot(seq, p) for p in range(start, end)]

    def cached_prefix_len(self, seq: Sequence) -> int:
        """How many leading tokens of `seq` the prefix cache already holds (0 without prefix caching)."""
        return len(self._match_prefix(seq)) * self.block_size

    # ------------------------------------------------------------------ admission (prefill)
    def can_allocate(self, seq: Sequence) -> bool:
        """Enough free blocks for all of `seq`'s tokens, counting prefix-cache hits as already there
        (a hit on a freed block still takes it off the free list, so it is not free for this purpose)."""
        hits = self._match_prefix(seq)
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return seq.num_blocks(self.block_size) - len(hits) + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence its block table; set `num_cached_tokens` to the prefix-cache hit length."""
        if seq.block_table:
            raise RuntimeError(f"sequence {seq.seq_id} already holds blocks {seq.block_table}")
        if not self.can_allocate(seq):
            raise RuntimeError(f"not enough free blocks for sequence {seq.seq_id}; check can_allocate first")
        hits = self._match_prefix(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_block_ids[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        for _ in range(seq.num_blocks(self.block_size) - len(hits)):
            seq.block_table.append(self._take_free_block())
        seq.num_cached_tokens = len(hits) * self.block_size

    # ------------------------------------------------------------------ growth (decode)
    def _needs_block(self, seq: Sequence) -> bool:
        return len(seq.block_table) * self.block_size < seq.num_tokens

    def can_append(self, seq: Sequence) -> bool:
        """Can the last token (sampled but not yet in the cache) get a slot? Only needs a free block when the
        sequence has just filled its last one."""
        return not self._needs_block(seq) or self.num_free_blocks > 0

    def append_slot(self, seq: Sequence) -> None:
        """Make sure the slot for position `num_tokens - 1` exists, taking one new block if needed."""
        if self._needs_block(seq):
            if len(seq.block_table) * self.block_size + self.block_size < seq.num_tokens:
                raise RuntimeError(f"sequence {seq.seq_id} is more than one block short; was it allocated?")
            if not self.free_block_ids:
                raise RuntimeError("no free block; check can_append first")
            seq.block_table.append(self._take_free_block())

    # ------------------------------------------------------------------ release
    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references. A block whose count reaches 0 goes back on the free list (keeping
        its prefix hash). Last blocks are freed first so they are reused before the shared prefix blocks."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None
        seq.block_table = []
        seq.num_cached_tokens = 0

    # ------------------------------------------------------------------ prefix cache
    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Publish the sequence's full blocks whose KV is now computed (the first `num_cached_tokens`
        tokens). Called after each step, so no one can reuse a block before its KV exists."""
        if not self.enable_prefix_caching:
            return
        n_full = seq.num_cached_tokens // self.block_size
        first = n_full
        while first > 0 and self.blocks[seq.block_table[first - 1]].hash is None:
            first -= 1
        if first == n_full:
            return
        tokens = seq.token_ids
        parent = self.blocks[seq.block_table[first - 1]].hash if first > 0 else _ROOT_HASH
        for i in range(first, n_full):
            block = self.blocks[seq.block_table[i]]
            block.token_ids = tuple(tokens[i * self.block_size:(i + 1) * self.block_size])
            block.hash = hash((parent, block.token_ids))
            self.hash_to_block_id.setdefault(block.hash, block.block_id)
            parent = block.hash

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Published blocks equal to `seq`'s leading full blocks. The block holding the last token is never
        matched: the model must compute that token to get the logits for the next one."""
        if not self.enable_prefix_caching:
            return []
        tokens = seq.token_ids
        hits: list[int] = []
        parent = _ROOT_HASH
        for i in range((seq.num_tokens - 1) // self.block_size):
            chunk = tuple(tokens[i * self.block_size:(i + 1) * self.block_size])
            h = hash((parent, chunk))
            block_id = self.hash_to_block_id.get(h)
            if block_id is None or self.blocks[block_id].token_ids != chunk:  # tokens checked: no false hits
                break
            hits.append(block_id)
            parent = h
        return hits

    def _take_free_block(self) -> int:
        """Oldest free block, evicted from the prefix cache if it was published, with one reference."""
        block_id, _ = self.free_block_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block_id.get(block.hash) == block_id:
            del self.hash_to_block_id[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id
