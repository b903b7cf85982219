"""Iteration-level scheduling (continuous batching): every step decides afresh which sequences run.

The policy is two switches of labkit.serve.config.EngineConfig (its only configuration, read as given):
- `mixed_batches=False` (nano-vllm's policy): prefill first. If waiting requests can be admitted (first come,
  first served; stop at the first that does not fit) under the sequence budget (`max_num_seqs` running), the token
  budget (`max_num_batched_tokens` this step) and the free blocks, the step prefills exactly those: new requests
  get their first token soon (low TTFT), at the price of a stalled decode step for the running ones. Otherwise
  decode: every running sequence computes its last token. When a sequence needs a new block and none is free,
  the newest running sequence is preempted (its blocks freed; it goes back to the front of the waiting queue and
  is recomputed on readmission, output kept), down to the sequence itself if it is alone.
- `mixed_batches=True` (transformers' and vLLM's V1 schedulers): every running sequence decodes one token first,
  and the token budget left over admits waiting requests whose prefill runs in the same step, so running
  sequences never stall behind a prefill.
- `enable_chunked_prefill`: a prompt longer than the budget left is split across steps (prefills already under
  way continue first, then waiting requests are admitted). With mixed batches (vLLM's V1 default) a new 512-token
  prompt never stalls the running ones for a whole prefill; without (SGLang's default) prefill chunks run in steps
  of their own, before any decode. Either way the budget no longer has to hold the longest prompt.
- A request that can never run is rejected at `add` with a reason, never truncated: an empty prompt, a
  prompt whose length plus `max_tokens` exceeds `max_model_len`, or one that alone would need more blocks
  than the whole cache. So the oldest running sequence can always make progress and no request is stuck or lost.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from labkit.serve.blocks import BlockManager
from labkit.serve.config import EngineConfig
from labkit.serve.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    """One sequence's work this step: compute positions `[start, end)` and store their KV in `slot_mapping`.

    Attention for these positions reads the whole context `[0, end)` through `block_table`; the logits of
    the last position (`end - 1`) give the next token."""

    seq: Sequence
    start: int
    end: int
    slot_mapping: list[int]
    block_table: list[int]

    @property
    def token_ids(self) -> list[int]:
        """The input tokens for positions `[start, end)`."""
        return self.seq.token_ids[self.start:self.end]

    @property
    def positions(self) -> range:
        return range(self.start, self.end)

    @property
    def num_new_tokens(self) -> int:
        return self.end - self.start

    @property
    def context_len(self) -> int:
        """Tokens in the cache once this step has run (what attention spans)."""
        return self.end


@dataclass
class SchedulerOutput:
    """What the model runner needs for one step. Without `mixed_batches` a step is all-prefill or all-decode;
    with it a step may hold both, and `is_prefill` says whether it holds any prefill."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    is_prefill: bool = False
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def seqs(self) -> list[Sequence]:
        return [s.seq for s in self.scheduled]

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


def _any_prefill(work: list[ScheduledSeq]) -> bool:
    """Whether prefill work holds a prompt chunk (more than one token, or not yet the sequence's end)."""
    return any(w.num_new_tokens > 1 or w.end < w.seq.num_tokens for w in work)


class Scheduler:
    """Owns the waiting and running queues and the block manager. Driven by the engine:
    `add` / `cancel` at any time between steps, then per step `schedule()` -> run the model ->
    `postprocess(output.seqs, next_token_ids, now)`."""

    def __init__(self, config: EngineConfig, eos_token_id: int | None = None):
        if not config.is_resolved:
            raise ValueError("the scheduler needs max_num_batched_tokens, num_blocks and max_model_len: pass "
                             "config.resolved(max_model_len, num_blocks) (the engine does this from its model)")
        self.config = config
        self.eos_token_id = eos_token_id
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()  # admission order: the newest is at the right
        self._live: dict[int, Sequence] = {}

    # ------------------------------------------------------------------ requests in and out
    def add(self, seq: Sequence) -> bool:
        """Queue a new request. Returns False, with the sequence marked REJECTED and the reason in
        `finish_reason`, when it could never run; the scheduler then forgets it."""
        if seq.status is not SequenceStatus.WAITING or seq.block_table:
            raise ValueError(f"only a new waiting sequence can be added, got {seq!r}")
        if seq.seq_id in self._live:
            raise ValueError(f"sequence id {seq.seq_id} is already queued or running")
        reason = self.reject_reason(seq)
        if reason is not None:
            seq.finish(SequenceStatus.REJECTED, f"rejected: {reason}")
            return False
        self.waiting.append(seq)
        self._live[seq.seq_id] = seq
        return True

    def reject_reason(self, seq: Sequence) -> str | None:
        """Why `seq` could never complete here, or None. The KV of the very last token is never computed, so
        a request needs slots for at most `final_len - 1` tokens."""
        cfg = self.config
        n = seq.num_prompt_tokens
        if n == 0:
            return "empty prompt"
        if n > cfg.max_model_len:
            return f"prompt has {n} tokens, more than max_model_len={cfg.max_model_len}"
        final_len = n + seq.sampling_params.max_tokens
        if final_len > cfg.max_model_len:  # never cut silently: say so now, as vLLM's API server does
            return (f"prompt ({n} tokens) + max_tokens ({seq.sampling_params.max_tokens}) = {final_len} tokens, "
                    f"more than max_model_len={cfg.max_model_len}")
        need = self.block_manager.blocks_for(final_len - 1)
        if need > cfg.num_blocks:
            return (f"needs up to {need} KV blocks ({final_len - 1} tokens), more than the whole cache "
                    f"({cfg.num_blocks} blocks of {cfg.block_size} tokens)")
        return None

    def cancel(self, seq_id: int) -> Sequence | None:
        """Stop a waiting or running request now and free its blocks. Returns it (CANCELLED), or None if the
        id is not live (unknown, finished, rejected or already cancelled)."""
        seq = self._live.pop(seq_id, None)
        if seq is None:
            return None
        (self.running if seq.status is SequenceStatus.RUNNING else self.waiting).remove(seq)
        self.block_manager.free(seq)
        seq.finish(SequenceStatus.CANCELLED, "cancelled")
        return seq

    def get(self, seq_id: int) -> Sequence | None:
        """The live (waiting or running) sequence with this id."""
        return self._live.get(seq_id)

    def has_unfinished(self) -> bool:
        return bool(self._live)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> SchedulerOutput:
        """Pick this step's work under the configured policy (see the module's docstring). Empty only when
        nothing is live."""
        if self.config.enable_chunked_prefill:
            return self._chunked()
        if self.config.mixed_batches:
            return self._mixed()
        admitted = self._admit()
        if admitted:
            return SchedulerOutput([self._work(s) for s in admitted], is_prefill=True)
        return self._decode()

    def _mixed(self) -> SchedulerOutput:
        """Mixed policy (as transformers' and vLLM's V1 schedulers do): every running sequence decodes one
        token, preempting the newest when blocks are short, and the token budget left over admits waiting
        requests whose prefill runs in the same step. Running sequences never stall behind a long prefill."""
        decode = self._decode()
        budget = self.config.max_num_batched_tokens - decode.num_batched_tokens
        admitted = self._admit(budget) if not decode.preempted else []  # no admission while memory is short
        return SchedulerOutput(decode.scheduled + [self._work(s) for s in admitted], is_prefill=bool(admitted),
                               preempted=decode.preempted)

    def _chunked(self) -> SchedulerOutput:
        """Chunked prefill. Mixed: decodes first (preempting the newest when blocks are short), then the budget left
        goes to prefill chunks. Not mixed: a step of prefill chunks alone while any prefill can run, else a
        decode step. Chunks continue the prefills under way in admission order, then admit waiting requests
        (first come, first served), each taking as many of its remaining tokens as the budget allows."""
        if not self.config.mixed_batches:
            chunks = self._prefill_chunks(self.config.max_num_batched_tokens)
            return (SchedulerOutput(chunks, is_prefill=_any_prefill(chunks)) if chunks
                    else self._decode(prefilling=False))
        decode = self._decode(prefilling=False)
        budget = self.config.max_num_batched_tokens - decode.num_batched_tokens
        chunks = self._prefill_chunks(budget, admit=not decode.preempted)  # no admission while memory is short
        return SchedulerOutput(decode.scheduled + chunks, is_prefill=_any_prefill(chunks),
                               preempted=decode.preempted)

    def _prefill_chunks(self, budget: int, admit: bool = True) -> list[ScheduledSeq]:
        """Up to `budget` prompt tokens: the prefills under way first (admission order), then new admissions."""
        work = []
        for seq in [s for s in self.running if s.num_tokens - s.num_cached_tokens > 1]:
            if budget <= 0:
                break
            work.append(self._work(seq, min(seq.num_tokens, seq.num_cached_tokens + budget)))
            budget -= work[-1].num_new_tokens
        for seq in self._admit(budget, chunked=True) if admit else []:
            work.append(self._work(seq, min(seq.num_tokens, seq.num_cached_tokens + budget)))
            budget -= work[-1].num_new_tokens
        return work

    def _admit(self, budget: int | None = None, chunked: bool = False) -> list[Sequence]:
        cfg, bm = self.config, self.block_manager
        admitted: list[Sequence] = []
        budget = cfg.max_num_batched_tokens if budget is None else budget
        while self.waiting and len(self.running) < cfg.max_num_seqs:
            seq = self.waiting[0]
            need = 1 if chunked else seq.num_tokens - bm.cached_prefix_len(seq)  # chunked: any part will do
            if need > budget or not bm.can_allocate(seq):
                break  # first come, first served: no overtaking, so a long request is not starved
            self.waiting.popleft()
            bm.allocate(seq)
            budget -= min(seq.num_tokens - seq.num_cached_tokens, budget)  # its first chunk (all of it unchunked)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted.append(seq)
        return admitted

    def _decode(self, prefilling: bool = True) -> SchedulerOutput:
        """Every running sequence computes its last token, oldest first, preempting the newest while blocks are
        short. `prefilling=False` (chunked prefill) passes over sequences whose prefill is still under way:
        `_chunked` continues them with what is left of the token budget."""
        bm = self.block_manager
        scheduled: list[Sequence] = []
        preempted: list[Sequence] = []
        survivors: list[Sequence] = []  # still running after this step, in admission order
        while self.running:
            seq = self.running.popleft()  # oldest first
            if not prefilling and seq.num_tokens - seq.num_cached_tokens > 1:
                survivors.append(seq)
                continue
            while not bm.can_append(seq):
                victim = self.running.pop() if self.running else seq  # newest; the sequence itself if alone
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                bm.append_slot(seq)
                scheduled.append(seq)
                survivors.append(seq)
        self.running.extend(survivors)
        return SchedulerOutput([self._work(s) for s in scheduled], is_prefill=False, preempted=preempted)

    def _preempt(self, seq: Sequence) -> None:
        """Free the blocks and queue the sequence first in line; its KV is recomputed when readmitted.
        Victims are taken newest first, so queuing each at the front keeps them in admission order."""
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        seq.scheduled_end = None
        self.waiting.appendleft(seq)

    def _work(self, seq: Sequence, end: int | None = None) -> ScheduledSeq:
        """Positions `[num_cached_tokens, end)` of `seq` (default: all it has not computed) for this step."""
        start, end = seq.num_cached_tokens, seq.num_tokens if end is None else end
        seq.scheduled_end = end
        return ScheduledSeq(seq, start, end, self.block_manager.slot_mapping(seq, start, end), list(seq.block_table))

    # ------------------------------------------------------------------ after the model ran
    def postprocess(self, seqs: list[Sequence], token_ids: list[int], now: float | None = None) -> list[Sequence]:
        """Append each sequence's new token with its timestamp (a prefill chunk that did not reach the end of
        the sequence yields none: its entry in `token_ids` is ignored), finish those that hit `max_tokens`,
        `max_model_len` ("length") or EOS / a stop token ("stop"), and free their blocks. Sequences cancelled
        since `schedule` are skipped. Returns the sequences that finished in this step."""
        if len(seqs) != len(token_ids):
            raise ValueError(f"{len(seqs)} sequences but {len(token_ids)} token ids")
        now = time.perf_counter() if now is None else now
        finished: list[Sequence] = []
        for seq, token_id in zip(seqs, token_ids, strict=True):
            if seq.status is not SequenceStatus.RUNNING:
                continue
            end = seq.num_tokens if seq.scheduled_end is None else seq.scheduled_end
            seq.num_cached_tokens, seq.scheduled_end = end, None  # this step computed the KV of [.., end)
            self.block_manager.cache_computed_blocks(seq)
            if end < seq.num_tokens:  # a chunk of a prefill: no token until the last chunk
                continue
            seq.append_token(token_id, now)
            reason = self._stop_reason(seq, int(token_id))
            if reason is not None:
                self.running.remove(seq)
                del self._live[seq.seq_id]
                self.block_manager.free(seq)
                seq.finish(SequenceStatus.FINISHED, reason)
                finished.append(seq)
        return finished

    def _stop_reason(self, seq: Sequence, token_id: int) -> str | None:
        params = seq.sampling_params
        if token_id in params.stop_token_ids:
            return "stop"
        if not params.ignore_eos and self.eos_token_id is not None and token_id == self.eos_token_id:
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return "length"
        return None
