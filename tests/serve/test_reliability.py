"""Issue 6's reliability test: 1,000 random requests through a deliberately small KV cache, with random
arrivals and cancellations, driven by a fake model runner that keeps a fake KV cache of (position, token)
per slot. Every request must end finished, rejected with a reason or cancelled, exactly once; every block
must be back on the free list; and every finished request's tokens must equal what the fake model gives for
that prompt alone, so preemption + recompute (and prefix-cache reuse) changed nothing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from labkit.serve import EngineConfig, SamplingParams, Scheduler, SchedulerOutput, Sequence, SequenceStatus

VOCAB, EOS = 64, 0
CONFIG = dict(max_num_seqs=8, max_num_batched_tokens=96, block_size=4, num_blocks=20,
              max_model_len=96)  # the cache holds 80 tokens: about three average requests


def fake_model(context: list[int]) -> int:
    """A deterministic "next token" of the whole context (so a wrong context gives a different answer)."""
    return hash(tuple(context)) % VOCAB


def reference_output(seq: Sequence, max_model_len: int) -> list[int]:
    """What the request yields run alone, without batching, paging or preemption."""
    tokens, out = list(seq.prompt_token_ids), []
    while True:
        t = fake_model(tokens)
        tokens.append(t)
        out.append(t)
        stop = t == EOS and not seq.sampling_params.ignore_eos
        if stop or len(out) >= seq.sampling_params.max_tokens or len(tokens) >= max_model_len:
            return out


class FakeRunner:
    """Stores each computed token's (position, token) in its slot, then reads every sequence's whole context
    back through its block table, as paged attention would, and checks it before answering."""

    def __init__(self, cfg: EngineConfig):
        self.block_size = cfg.block_size
        self.kv: list[tuple[int, int] | None] = [None] * (cfg.num_blocks * cfg.block_size)

    def run(self, out: SchedulerOutput) -> list[int]:
        for w in out.scheduled:  # store first (one layer's KV write for the whole batch) ...
            for pos, tok, slot in zip(w.positions, w.token_ids, w.slot_mapping, strict=True):
                self.kv[slot] = (pos, tok)
        answers = []
        for w in out.scheduled:  # ... then attend over the cached context
            bs = self.block_size
            context = [self.kv[w.block_table[p // bs] * bs + p % bs] for p in range(w.context_len)]
            expected = w.seq.token_ids[:w.context_len]
            assert context == list(enumerate(expected)), f"KV cache corrupted for {w.seq!r}"
            answers.append(fake_model(expected))
        return answers


def check_invariants(s: Scheduler, out: SchedulerOutput) -> None:
    cfg, bm = s.config, s.block_manager
    assert len(out.scheduled) <= cfg.max_num_seqs and s.num_running <= cfg.max_num_seqs
    assert out.num_batched_tokens <= cfg.max_num_batched_tokens
    for w in out.scheduled:
        assert w.seq.status is SequenceStatus.RUNNING
        assert w.start == w.seq.num_cached_tokens and w.start < w.end <= w.seq.num_tokens
        assert w.end == w.seq.num_tokens or cfg.enable_chunked_prefill  # only chunked prefill splits a prompt
        assert out.is_prefill or w.num_new_tokens == 1
    written = [slot for w in out.scheduled for slot in w.slot_mapping]
    assert len(written) == len(set(written)), "two tokens written to one slot"
    assert all(bm.blocks[slot // cfg.block_size].ref_count == 1 for slot in written), "write to a shared block"
    live = list(s.waiting) + list(s.running)
    assert len({id(x) for x in live}) == len(live) == len(s._live)
    assert all(x.status is SequenceStatus.WAITING and not x.block_table for x in s.waiting)
    for x in s.running:  # holds the blocks of its computed KV; a scheduled one also has its new tokens' slots
        assert x.status is SequenceStatus.RUNNING
        assert bm.blocks_for(x.num_cached_tokens) <= len(x.block_table) <= x.num_blocks(cfg.block_size)
    assert all(len(w.seq.block_table) == w.seq.num_blocks(cfg.block_size) for w in out.scheduled)
    refs = Counter(b for x in s.running for b in x.block_table)
    assert all(b.ref_count == refs[b.block_id] for b in bm.blocks)
    assert set(bm.free_block_ids) == {b.block_id for b in bm.blocks if b.ref_count == 0}


def make_request(rng: random.Random, seq_id: int, now: float, prefixes: list[list[int]]) -> Sequence:
    n = rng.randint(1, 48) if rng.random() < 0.9 else rng.randint(49, 110)  # some too long for cache / context
    prompt = [rng.randrange(1, VOCAB) for _ in range(n)]
    if rng.random() < 0.4:  # a shared "system prompt", for the prefix cache
        p = rng.choice(prefixes)
        prompt = (p + prompt)[:max(n, len(p) + 1)]
    return Sequence(seq_id, prompt, SamplingParams(max_tokens=rng.randint(1, 32), ignore_eos=rng.random() < 0.2),
                    arrival_time=now)


def simulate(seed: int, n_requests: int, prefix_caching: bool, mixed: bool = False,
             chunked: bool = False) -> tuple[list[Sequence], Counter, Scheduler]:
    rng = random.Random(seed)
    config = {**CONFIG, "max_num_batched_tokens": 20} if chunked else CONFIG  # a budget far below the longest prompt
    cfg = EngineConfig(**config, enable_prefix_caching=prefix_caching, mixed_batches=mixed,
                       enable_chunked_prefill=chunked)
    s, runner = Scheduler(cfg, eos_token_id=EOS), FakeRunner(cfg)
    prefixes = [[rng.randrange(1, VOCAB) for _ in range(rng.choice([8, 12, 16]))] for _ in range(3)]
    all_seqs: list[Sequence] = []
    ends: Counter = Counter()  # how many times each request was reported ended: must be exactly once
    stats: Counter = Counter()
    now = 0.0
    while len(all_seqs) < n_requests or s.has_unfinished():
        now += 1.0
        assert now < 50 * n_requests, "no progress: a request is stuck (livelock)"
        for _ in range(5 if rng.random() < 0.02 else int(rng.random() < 0.25)):  # arrivals, with bursts
            if len(all_seqs) < n_requests:
                seq = make_request(rng, len(all_seqs), now, prefixes)
                all_seqs.append(seq)
                if not s.add(seq):
                    ends[seq.seq_id] += 1
        if all_seqs and rng.random() < 0.04:  # cancel anything, live or not
            cancelled = s.cancel(rng.choice(all_seqs).seq_id)
            if cancelled is not None:
                ends[cancelled.seq_id] += 1
                assert not cancelled.block_table
        was_running = {x.seq_id for x in s.running}
        out = s.schedule()
        check_invariants(s, out)
        stats["preempted"] += len(out.preempted)
        prefills = [w for w in out.scheduled if w.seq.seq_id not in was_running]
        stats["cached_tokens"] += sum(w.start for w in prefills)
        decodes = [w for w in out.scheduled if w.seq.seq_id in was_running and w.start == w.seq.num_tokens - 1]
        stats["mixed_steps"] += bool(decodes) and len(decodes) < len(out.scheduled)  # decode beside prefill work
        stats["chunks"] += sum(w.end < w.seq.num_tokens for w in out.scheduled)
        if out.is_empty:
            assert not s.has_unfinished() and len(all_seqs) < n_requests
            continue
        tokens = runner.run(out)
        if rng.random() < 0.01:  # cancelled while the model ran: postprocess must skip it
            victim = rng.choice(out.seqs)
            s.cancel(victim.seq_id)
            ends[victim.seq_id] += 1
        for seq in s.postprocess(out.seqs, tokens, now):
            ends[seq.seq_id] += 1
    return all_seqs, ends + Counter({"_" + k: v for k, v in stats.items()}), s


@pytest.mark.parametrize("mixed, chunked", [(False, False), (True, False), (True, True), (False, True)],
                         ids=["prefill-first", "mixed-batches", "chunked-prefill", "chunked-prefill-first"])
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_thousand_requests_none_lost_none_duplicated_no_block_leaked(prefix_caching, mixed, chunked):
    seqs, ends, s = simulate(seed=6, n_requests=1000, prefix_caching=prefix_caching, mixed=mixed, chunked=chunked)
    assert (ends["_mixed_steps"] > 0) == mixed  # only the mixed policies decode beside prefills
    assert (ends["_chunks"] > 100) == chunked  # prompts were really split across steps
    assert len(seqs) == 1000 and {x.seq_id for x in seqs} == set(range(1000))
    assert all(ends[x.seq_id] == 1 for x in seqs), "a request ended twice or never"
    assert not s.has_unfinished() and s.num_waiting == 0 and s.num_running == 0
    bm = s.block_manager
    assert bm.num_free_blocks == bm.num_blocks and all(b.ref_count == 0 for b in bm.blocks)

    by_status = Counter(x.status for x in seqs)
    assert set(by_status) == {SequenceStatus.FINISHED, SequenceStatus.REJECTED, SequenceStatus.CANCELLED}
    reasons = Counter(x.finish_reason.split(":")[0] for x in seqs)
    assert set(reasons) == {"length", "stop", "rejected", "cancelled"}
    assert any("max_model_len" in x.finish_reason for x in seqs if x.status is SequenceStatus.REJECTED)
    assert any("whole cache" in x.finish_reason for x in seqs if x.status is SequenceStatus.REJECTED)
    assert ends["_preempted"] > 50, "the cache should be small enough to force many preemptions"
    assert (ends["_cached_tokens"] > 0) == prefix_caching
    assert sum(x.num_preemptions for x in seqs) == ends["_preempted"]

    for x in seqs:
        assert len(x.token_times) == x.num_output_tokens
        assert x.token_times == sorted(x.token_times) and all(t >= x.arrival_time for t in x.token_times)
        assert not x.block_table
        if x.status is SequenceStatus.FINISHED:
            assert x.output_token_ids == reference_output(x, CONFIG["max_model_len"])
            if x.finish_reason == "stop":
                assert x.output_token_ids[-1] == EOS and not x.sampling_params.ignore_eos
            else:
                assert x.num_output_tokens == x.sampling_params.max_tokens or x.num_tokens >= CONFIG["max_model_len"]
        elif x.status is SequenceStatus.CANCELLED:
            assert x.finish_reason == "cancelled"
            assert x.output_token_ids == reference_output(x, CONFIG["max_model_len"])[:x.num_output_tokens]
        else:
            assert x.finish_reason.startswith("rejected: ") and x.num_output_tokens == 0


def test_same_seed_same_schedule_and_tokens():
    def trace(seed):
        seqs, _, _ = simulate(seed=seed, n_requests=150, prefix_caching=True)
        return [(x.status, x.finish_reason, x.output_token_ids, x.token_times) for x in seqs]

    assert trace(1) == trace(1)
    assert trace(1) != trace(2)
