import pytest

from labkit.serve import EngineConfig, SamplingParams, Scheduler, Sequence, SequenceStatus

EOS = 0


def make(max_num_seqs=4, max_num_batched_tokens=64, block_size=4, num_blocks=32, max_model_len=64,
         prefix=False) -> Scheduler:
    return Scheduler(EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                  block_size=block_size, num_blocks=num_blocks, max_model_len=max_model_len,
                                  enable_prefix_caching=prefix, enable_chunked_prefill=False, mixed_batches=False),
                     eos_token_id=EOS)


def req(seq_id: int, n_prompt: int, max_tokens: int = 8, **kw) -> Sequence:
    prompt = [1000 + seq_id * 100 + i for i in range(n_prompt)]
    return Sequence(seq_id, prompt, SamplingParams(max_tokens=max_tokens, **kw), arrival_time=0.0)


def step(sched: Scheduler, token: int = 7, now: float = 1.0):
    """One engine iteration with a fake model that always answers `token`."""
    out = sched.schedule()
    finished = sched.postprocess(out.seqs, [token] * len(out.seqs), now)
    return out, finished


def test_the_scheduler_refuses_a_config_left_to_the_model():
    with pytest.raises(ValueError, match="config.resolved"):
        Scheduler(EngineConfig())  # no context length, no cache size: the engine fills these from its model
    s = Scheduler(EngineConfig(num_blocks=8, max_model_len=64).resolved(max_model_len=999, num_blocks=999))
    assert (s.config.max_model_len, s.config.num_blocks, s.config.max_num_batched_tokens) == (64, 8, 512)


def test_prefill_respects_the_token_budget_in_arrival_order():
    s = make(max_num_batched_tokens=64)
    for i in range(3):
        assert s.add(req(i, 30))
    out = s.schedule()
    assert out.is_prefill and [x.seq_id for x in out.seqs] == [0, 1]
    assert out.num_batched_tokens == 60 <= 64
    assert s.num_waiting == 1 and s.num_running == 2


def test_prefill_respects_the_sequence_budget_across_steps():
    s = make(max_num_seqs=2)
    for i in range(3):
        s.add(req(i, 3))
    out, _ = step(s)
    assert len(out.seqs) == 2 and s.num_running == 2
    out, _ = step(s)  # no room for the third: the running pair decodes
    assert not out.is_prefill and len(out.seqs) == 2 and s.num_waiting == 1


def test_first_come_first_served_no_overtaking():
    s = make(max_num_batched_tokens=64)
    s.add(req(0, 50))
    s.add(req(1, 20))  # would fit the remaining 14 tokens only if it overtook: it must not
    s.add(req(2, 5))
    out = s.schedule()
    assert [x.seq_id for x in out.seqs] == [0]


def test_prefill_then_decode_positions_and_slots():
    s = make(block_size=4)
    a = req(1, 6, max_tokens=3)
    s.add(a)
    out = s.schedule()
    (w,) = out.scheduled
    assert out.is_prefill and (w.start, w.end) == (0, 6) and w.token_ids == a.prompt_token_ids
    assert list(w.positions) == list(range(6)) and w.context_len == 6
    b0, b1 = a.block_table
    assert w.block_table == [b0, b1] and w.slot_mapping == [b0 * 4 + i for i in range(4)] + [b1 * 4, b1 * 4 + 1]
    s.postprocess(out.seqs, [42], now=2.0)
    assert a.output_token_ids == [42] and a.token_times == [2.0] and a.num_cached_tokens == 6
    out = s.schedule()
    (w,) = out.scheduled
    assert not out.is_prefill and (w.start, w.end) == (6, 7) and w.token_ids == [42]
    assert w.slot_mapping == [b1 * 4 + 2] and w.num_new_tokens == 1


def test_decode_runs_every_running_sequence_one_token_each():
    s = make(max_num_seqs=4)
    for i in range(3):
        s.add(req(i, 5 + i))
    step(s)
    out, _ = step(s)
    assert not out.is_prefill and sorted(x.seq_id for x in out.seqs) == [0, 1, 2]
    assert all(x.num_new_tokens == 1 for x in out.scheduled) and out.num_batched_tokens == 3


def test_finishes_on_length_and_frees_blocks():
    s = make()
    a = req(1, 5, max_tokens=3)
    s.add(a)
    for t in range(3):
        _, finished = step(s, token=7, now=float(t))
    assert finished == [a] and a.status is SequenceStatus.FINISHED and a.finish_reason == "length"
    assert a.output_token_ids == [7, 7, 7] and a.token_times == [0.0, 1.0, 2.0]
    assert a.block_table == [] and s.block_manager.num_free_blocks == 32 and not s.has_unfinished()


def test_finishes_on_eos_unless_ignored_and_on_stop_tokens():
    s = make()
    a, b, c = req(1, 3), req(2, 3, ignore_eos=True), req(3, 3, ignore_eos=True, stop_token_ids=[5])
    for x in (a, b, c):
        s.add(x)
    out = s.schedule()
    finished = s.postprocess(out.seqs, [EOS, EOS, 5], now=1.0)
    assert finished == [a, c] and a.finish_reason == "stop" and c.finish_reason == "stop"
    assert b.status is SequenceStatus.RUNNING and b.output_token_ids == [EOS]


def test_a_request_longer_than_the_context_is_rejected_never_cut():
    s = make(max_model_len=10, max_num_batched_tokens=64)
    a = req(1, 8, max_tokens=100)
    assert not s.add(a) and a.status is SequenceStatus.REJECTED and a.num_output_tokens == 0
    assert a.finish_reason == ("rejected: prompt (8 tokens) + max_tokens (100) = 108 tokens, more than "
                               "max_model_len=10")
    b = req(2, 8, max_tokens=2)  # exactly the context: runs to the end
    assert s.add(b)
    while s.has_unfinished():
        step(s)
    assert b.num_tokens == 10 and b.finish_reason == "length"


def test_rejects_what_can_never_run_with_a_reason():
    s = make(block_size=4, num_blocks=4, max_model_len=32, max_num_batched_tokens=32)  # cache: 16 tokens
    empty = Sequence(1, [], arrival_time=0.0)
    too_long = req(2, 33)
    too_big = req(3, 10, max_tokens=8)  # 17 tokens of KV needed at most: 5 blocks > 4
    exact = req(4, 10, max_tokens=7)  # 16 tokens of KV: exactly the whole cache
    assert not s.add(empty) and empty.finish_reason == "rejected: empty prompt"
    assert not s.add(too_long) and "max_model_len=32" in too_long.finish_reason
    assert too_long.prompt_token_ids == req(2, 33).prompt_token_ids  # not truncated
    assert not s.add(too_big) and "whole cache" in too_big.finish_reason
    for x in (empty, too_long, too_big):
        assert x.status is SequenceStatus.REJECTED and x.finish_reason.startswith("rejected: ")
    assert s.add(exact) and s.num_waiting == 1
    while s.has_unfinished():
        step(s)
    assert exact.finish_reason == "length" and exact.num_output_tokens == 7


def test_add_refuses_programming_errors():
    s = make()
    s.add(req(1, 3))
    with pytest.raises(ValueError, match="already queued"):
        s.add(req(1, 3))
    running = req(2, 3)
    running.status = SequenceStatus.RUNNING
    with pytest.raises(ValueError, match="new waiting"):
        s.add(running)
    out = s.schedule()
    with pytest.raises(ValueError, match="token ids"):
        s.postprocess(out.seqs, [], now=0.0)


def test_decode_preempts_the_newest_and_recomputes_it_later():
    # 4 blocks of 4 tokens: a and b each fill two, then both need a third and only one can have it.
    s = make(block_size=4, num_blocks=4, max_model_len=12, max_num_batched_tokens=16)
    a, b = req(1, 4, max_tokens=6), req(2, 4, max_tokens=6)
    s.add(a)
    s.add(b)
    step(s, token=11)  # prefill both (one block each); position 4 of each needs a second block
    out, _ = step(s, token=12)
    assert [x.seq_id for x in out.seqs] == [1, 2] and s.block_manager.num_free_blocks == 0
    for _ in range(3):
        step(s, token=13)  # positions 5..7 fit the second blocks
    assert a.num_tokens == 9 and b.num_tokens == 9
    out = s.schedule()
    assert [x.seq_id for x in out.seqs] == [1] and out.preempted == [b]
    assert b.status is SequenceStatus.WAITING and b.block_table == [] and b.num_cached_tokens == 0
    assert b.num_preemptions == 1 and list(s.waiting) == [b]
    assert b.output_token_ids == [11, 12, 13, 13, 13]  # output kept
    s.postprocess(out.seqs, [14], now=5.0)
    while a.status is SequenceStatus.RUNNING:
        step(s, token=14)
    assert a.finish_reason == "length"
    out = s.schedule()  # b readmitted: prompt + output so far recomputed in one prefill
    (w,) = out.scheduled
    assert out.is_prefill and w.seq is b and (w.start, w.end) == (0, 9) and w.token_ids == b.token_ids
    times_before = list(b.token_times)
    s.postprocess(out.seqs, [15], now=9.0)
    assert b.token_times == times_before + [9.0] and b.num_output_tokens == 6  # nothing emitted twice
    assert b.finish_reason == "length" and s.block_manager.num_free_blocks == 4


def test_several_victims_keep_their_order_in_the_waiting_queue():
    s = make(max_num_seqs=4, block_size=2, num_blocks=4, max_model_len=8, max_num_batched_tokens=8)
    seqs = [req(i, 2, max_tokens=4) for i in range(4)]
    for x in seqs:
        s.add(x)
    step(s)  # all four prefilled, one block each, cache full; each needs a block for its first decode
    late = req(9, 2, max_tokens=4)
    s.add(late)
    out = s.schedule()
    # 0 needs a block: 3 is preempted; 1 needs one: 2 is preempted; then 0 and 1 have blocks.
    assert [x.seq_id for x in out.seqs] == [0, 1] and [x.seq_id for x in out.preempted] == [3, 2]
    assert [x.seq_id for x in s.waiting] == [2, 3, 9]  # victims first, in admission order, then new arrivals


def test_cancel_frees_blocks_at_once_waiting_or_running():
    s = make(max_num_seqs=1, num_blocks=8)
    a, b = req(1, 10), req(2, 5)
    s.add(a)
    s.add(b)
    step(s)
    assert a.status is SequenceStatus.RUNNING and s.block_manager.num_free_blocks == 5
    assert s.cancel(1) is a
    assert a.status is SequenceStatus.CANCELLED and a.finish_reason == "cancelled" and a.block_table == []
    assert s.block_manager.num_free_blocks == 8 and s.num_running == 0
    assert s.cancel(2) is b and s.num_waiting == 0 and b.status is SequenceStatus.CANCELLED
    assert s.cancel(1) is None and s.cancel(12345) is None  # already gone / unknown
    assert not s.has_unfinished() and s.schedule().is_empty


def test_cancel_between_schedule_and_postprocess_is_skipped():
    s = make()
    a, b = req(1, 3), req(2, 3)
    s.add(a)
    s.add(b)
    out = s.schedule()
    s.cancel(1)
    finished = s.postprocess(out.seqs, [EOS, 7], now=1.0)
    assert finished == [] and a.output_token_ids == [] and a.finish_reason == "cancelled"
    assert b.output_token_ids == [7]


def test_cancel_finished_returns_none():
    s = make()
    a = req(1, 3, max_tokens=1)
    s.add(a)
    step(s)
    assert a.finish_reason == "length" and s.cancel(1) is None and a.status is SequenceStatus.FINISHED


def test_prefix_cache_hit_skips_the_shared_prompt_in_budget_and_work():
    s = make(prefix=True, block_size=4, max_num_batched_tokens=64)
    shared = list(range(500, 516))  # four full blocks
    a = Sequence(1, shared + [1, 2], SamplingParams(max_tokens=4), arrival_time=0.0)
    s.add(a)
    step(s)
    b = Sequence(2, shared + [3], SamplingParams(max_tokens=4), arrival_time=0.0)
    s.add(b)
    out = s.schedule()
    (w,) = out.scheduled
    assert out.is_prefill and (w.start, w.end) == (16, 17) and out.num_batched_tokens == 1
    assert b.block_table[:4] == a.block_table[:4]
    assert all(s.block_manager.blocks[i].ref_count == 2 for i in b.block_table[:4])
    s.postprocess(out.seqs, [9], now=1.0)
    while s.has_unfinished():
        step(s)
    assert s.block_manager.num_free_blocks == 32 and all(x.ref_count == 0 for x in s.block_manager.blocks)


def chunked(max_num_seqs=4, budget=8, block_size=4, num_blocks=64, max_model_len=64) -> Scheduler:
    return Scheduler(EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                                  block_size=block_size, num_blocks=num_blocks, max_model_len=max_model_len,
                                  mixed_batches=True, enable_chunked_prefill=True), eos_token_id=EOS)


def test_chunked_prefill_splits_a_long_prompt_and_yields_a_token_only_at_its_end():
    s = chunked(budget=8)
    a = req(1, 20, max_tokens=3)
    assert s.add(a)  # 20 tokens > the budget of 8: accepted, it is split across steps
    spans = []
    for _ in range(3):
        out, finished = step(s)
        spans.append([(w.start, w.end) for w in out.scheduled])
        assert out.is_prefill and out.num_batched_tokens <= 8
    assert spans == [[(0, 8)], [(8, 16)], [(16, 20)]]
    assert a.num_output_tokens == 1 and a.num_cached_tokens == 20  # one token, from the last chunk only
    out, _ = step(s)
    assert [(w.start, w.end) for w in out.scheduled] == [(20, 21)] and not out.is_prefill


def test_chunked_prefill_decodes_running_requests_first():
    s = chunked(budget=6)
    a = req(1, 4, max_tokens=8)
    s.add(a)
    step(s)  # a prefilled in one chunk: now decoding
    b = req(2, 12, max_tokens=2)
    s.add(b)
    out, _ = step(s)
    assert [(w.seq.seq_id, w.start, w.end) for w in out.scheduled] == [(1, 4, 5), (2, 0, 5)]  # decode first
    out, _ = step(s)
    assert [(w.seq.seq_id, w.start, w.end) for w in out.scheduled] == [(1, 5, 6), (2, 5, 10)]
    assert a.num_output_tokens == 3 and b.num_output_tokens == 0  # a never stalled behind b's prefill


def test_chunked_prefill_lifts_the_budget_rule_and_still_rejects_what_cannot_fit():
    with pytest.raises(ValueError, match="unless enable_chunked_prefill"):
        EngineConfig(max_num_batched_tokens=16, max_model_len=64, enable_chunked_prefill=False)
    s = chunked(budget=4, max_model_len=16)
    assert not s.add(req(1, 20)) and s.add(req(2, 10, max_tokens=6))


def test_mixed_batches_decides_whether_a_step_holds_prefill_and_decode_together():
    """One request decoding, a long one arriving: mixed, each step decodes the first beside a chunk of the second;
    not mixed (prefill first), the chunks run in steps of their own and the first waits until they are done."""
    def schedules(mixed: bool) -> list[list[tuple[int, int, int]]]:
        s = Scheduler(EngineConfig(max_num_seqs=4, max_num_batched_tokens=6, block_size=4, num_blocks=64,
                                   max_model_len=64, mixed_batches=mixed), eos_token_id=EOS)
        s.add(req(1, 4, max_tokens=8))
        step(s)  # prefilled in one step: now decoding
        s.add(req(2, 12, max_tokens=2))
        return [[(w.seq.seq_id, w.start, w.end) for w in step(s)[0].scheduled] for _ in range(4)]

    assert schedules(True) == [[(1, 4, 5), (2, 0, 5)], [(1, 5, 6), (2, 5, 10)], [(1, 6, 7), (2, 10, 12)],
                               [(1, 7, 8), (2, 12, 13)]]
    assert schedules(False) == [[(2, 0, 6)], [(2, 6, 12)], [(1, 4, 5), (2, 12, 13)], [(1, 5, 6)]]
