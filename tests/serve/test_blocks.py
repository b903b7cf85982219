import pytest

from labkit.serve import BlockManager, Sequence


def seq(seq_id: int, tokens: list[int]) -> Sequence:
    return Sequence(seq_id, tokens, arrival_time=0.0)


def computed(bm: BlockManager, s: Sequence) -> None:
    """What the scheduler does after a step: everything in the table so far has its KV computed."""
    s.num_cached_tokens = s.num_tokens
    bm.cache_computed_blocks(s)


def test_allocate_takes_ceil_blocks_and_maps_slots():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(1, list(range(10)))
    assert bm.can_allocate(a)
    bm.allocate(a)
    assert len(a.block_table) == 3 and len(set(a.block_table)) == 3
    assert bm.num_free_blocks == 5 and a.num_cached_tokens == 0
    assert all(bm.blocks[b].ref_count == 1 for b in a.block_table)
    b0, b1, b2 = a.block_table
    assert bm.slot_mapping(a, 0, 10) == [b0 * 4 + i for i in range(4)] + [b1 * 4 + i for i in range(4)] + [
        b2 * 4, b2 * 4 + 1]
    assert bm.slot(a, 9) == b2 * 4 + 1


def test_allocate_refuses_when_short_and_twice():
    bm = BlockManager(num_blocks=3, block_size=4)
    big = seq(1, list(range(13)))  # 4 blocks
    assert not bm.can_allocate(big)
    with pytest.raises(RuntimeError, match="can_allocate"):
        bm.allocate(big)
    assert bm.num_free_blocks == 3 and big.block_table == []
    a = seq(2, [1, 2, 3])
    bm.allocate(a)
    with pytest.raises(RuntimeError, match="already holds"):
        bm.allocate(a)


def test_append_slot_takes_a_block_only_at_a_boundary():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = seq(1, [1, 2, 3, 4])
    bm.allocate(a)
    assert bm.num_free_blocks == 2
    a.append_token(5, 0.0)  # position 4 has no slot yet
    assert bm.can_append(a)
    bm.append_slot(a)
    assert len(a.block_table) == 2 and bm.num_free_blocks == 1
    assert bm.slot(a, 4) == a.block_table[1] * 4
    for t in (6, 7, 8):  # positions 5..7 fit in the second block
        a.append_token(t, 0.0)
        bm.append_slot(a)
    assert len(a.block_table) == 2 and bm.num_free_blocks == 1


def test_can_append_false_when_cache_is_full():
    bm = BlockManager(num_blocks=2, block_size=2)
    a, b = seq(1, [1, 2]), seq(2, [3, 4])
    bm.allocate(a)
    bm.allocate(b)
    a.append_token(9, 0.0)
    assert bm.num_free_blocks == 0 and not bm.can_append(a)
    with pytest.raises(RuntimeError, match="can_append"):
        bm.append_slot(a)
    bm.free(b)
    assert bm.can_append(a)


def test_free_returns_every_block_and_detects_double_free():
    bm = BlockManager(num_blocks=6, block_size=4)
    a = seq(1, list(range(9)))
    bm.allocate(a)
    table = list(a.block_table)
    bm.free(a)
    assert a.block_table == [] and a.num_cached_tokens == 0
    assert bm.num_free_blocks == 6 and all(b.ref_count == 0 for b in bm.blocks)
    a.block_table = table  # a stale copy: freeing again must not silently corrupt the counts
    with pytest.raises(RuntimeError, match="freed more often"):
        bm.free(a)


def test_freed_blocks_are_reused_oldest_first_tail_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq(1, [1, 2, 3, 4, 5, 6])  # blocks 0, 1, 2
    bm.allocate(a)
    assert a.block_table == [0, 1, 2]
    bm.free(a)  # free list is now 3, 2, 1, 0: the never-used block, then a's tail before its head
    b = seq(2, [7, 8, 9, 10])
    bm.allocate(b)
    assert b.block_table == [3, 2]


def test_prefix_blocks_are_shared_with_reference_counts():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    prefix = list(range(100, 108))  # two full blocks
    a = seq(1, prefix + [1, 2])
    bm.allocate(a)
    assert bm.cached_prefix_len(seq(9, prefix + [5])) == 0  # nothing published before a's KV is computed
    computed(bm, a)
    b = seq(2, prefix + [3])
    assert bm.cached_prefix_len(b) == 8
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.num_cached_tokens == 8
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    assert bm.num_free_blocks == 10 - 4  # a: 3 blocks, b: 1 new block
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in b.block_table] == [1, 1, 1]
    assert bm.num_free_blocks == 7
    bm.free(b)
    assert bm.num_free_blocks == 10 and all(x.ref_count == 0 for x in bm.blocks)


def test_last_token_block_is_never_a_hit():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    a = seq(1, list(range(8)))
    bm.allocate(a)
    computed(bm, a)
    same = seq(2, list(range(8)))  # identical prompt: the second block holds its last token
    assert bm.cached_prefix_len(same) == 4
    longer = seq(3, list(range(9)))
    assert bm.cached_prefix_len(longer) == 8


def test_hash_chains_the_prefix():
    bm = BlockManager(num_blocks=10, block_size=2, enable_prefix_caching=True)
    a = seq(1, [1, 2, 3, 4, 5])
    bm.allocate(a)
    computed(bm, a)
    assert bm.cached_prefix_len(seq(2, [9, 9, 3, 4, 5])) == 0  # same second block after a different first
    assert bm.cached_prefix_len(seq(3, [1, 2, 9, 9, 5])) == 2


def test_freed_cached_block_is_revived_until_reused():
    bm = BlockManager(num_blocks=3, block_size=2, enable_prefix_caching=True)
    a = seq(1, [1, 2, 3])
    bm.allocate(a)
    computed(bm, a)
    cached_block = a.block_table[0]
    bm.free(a)
    assert bm.num_free_blocks == 3
    b = seq(2, [1, 2, 7, 8, 9])  # needs 3 blocks, one of them a hit on a free block: still exactly fits
    assert bm.can_allocate(b) and bm.cached_prefix_len(b) == 2
    bm.allocate(b)
    assert b.block_table[0] == cached_block and bm.num_free_blocks == 0
    bm.free(b)
    # Handing the block out fresh evicts it from the cache.
    c = seq(3, [5, 5, 5, 5, 5, 5])
    bm.allocate(c)
    assert cached_block in c.block_table
    assert bm.cached_prefix_len(seq(4, [1, 2, 3])) == 0 and bm.hash_to_block_id == {}


def test_can_allocate_counts_revived_hits_as_used():
    bm = BlockManager(num_blocks=3, block_size=2, enable_prefix_caching=True)
    a = seq(1, [1, 2, 3])
    bm.allocate(a)
    computed(bm, a)
    bm.free(a)
    other = seq(2, [7, 7])
    bm.allocate(other)  # takes one of the free blocks (the oldest freed, not the cached one)
    assert bm.num_free_blocks == 2
    b = seq(3, [1, 2, 3, 4, 5])  # 3 blocks: 1 revived hit + 2 new > 2 free
    assert bm.cached_prefix_len(b) == 2 and not bm.can_allocate(b)


def test_no_sharing_without_prefix_caching():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = seq(1, list(range(9)))
    bm.allocate(a)
    computed(bm, a)
    b = seq(2, list(range(9)))
    assert bm.cached_prefix_len(b) == 0
    bm.allocate(b)
    assert not set(a.block_table) & set(b.block_table) and b.num_cached_tokens == 0
