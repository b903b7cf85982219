"""The servers notebook 05 compares, each replaying a trace from labkit.serve.workload in real time.

Every server sees the same rules: a request can start only once its arrival offset has passed on the run's
clock, and its `RequestTiming.start` is that arrival time, so TTFT includes the time it queued. Each
returns `(timings, outputs)` in trace order: one `labkit.core.bench.RequestTiming` and one list of generated
token ids per request. All decode greedily and produce exactly `output_len` tokens (EOS ignored, as in
vLLM's benchmark), so their tokens can be checked against `model.generate` and their speeds compared.

- `run_sequential`: one request at a time through `generate` (what a naive server does).
- `run_static`: static batching: wait for a full batch or a timeout, pad, `generate` the batch to its end.
- `run_engine`: labkit's continuous-batching engine through its `add_request` / `step` API.
- `run_hf_continuous`: transformers' own continuous batching, as a peer; raises `Unavailable` with the
  reason when it cannot run here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from labkit.core.bench import RequestTiming, TimestampStreamer, generate_timed
from labkit.serve.sequence import SamplingParams
from labkit.serve.workload import Request

Replay = tuple[list[RequestTiming], list[list[int]]]


class Unavailable(RuntimeError):
    """This server cannot run on this machine or model; the message is the reason (the notebook records
    "skipped: <reason>")."""


def _by_arrival(trace: Sequence[Request]) -> list[int]:
    if not trace:
        raise ValueError("the trace is empty")
    return sorted(range(len(trace)), key=lambda i: trace[i].arrival_s)


def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _pad_id(model) -> int:
    for cfg in (model.generation_config, model.config):
        pad = getattr(cfg, "pad_token_id", None)
        if isinstance(pad, int):
            return pad
    return 0


# ---------------------------------------------------------------- sequential

def run_sequential(model, trace: Sequence[Request]) -> Replay:
    """One request at a time, in arrival order, each through `generate` with per-token timestamps; a request
    that arrives while another runs waits for it (that wait is in its TTFT)."""
    timings: list[RequestTiming | None] = [None] * len(trace)
    outputs: list[list[int]] = [[] for _ in trace]
    t0 = time.perf_counter()
    for i in _by_arrival(trace):
        r = trace[i]
        _sleep_until(t0 + r.arrival_s)
        ids = torch.tensor([r.prompt_ids], device=model.device)
        rt, out = generate_timed(model, ids, r.output_len)
        rt.service_start, rt.start = rt.start, t0 + r.arrival_s
        timings[i], outputs[i] = rt, out[0, r.prompt_len:].tolist()
    return timings, outputs


# ---------------------------------------------------------------- static batching

def _next_batch(trace: Sequence[Request], todo: list[int], t0: float, batch_size: int,
                max_wait_s: float) -> list[int]:
    """Wait until `batch_size` requests have arrived or `max_wait_s` has passed since the first one waiting
    arrived, then take those that have arrived (at most `batch_size`, oldest first)."""
    first = t0 + trace[todo[0]].arrival_s
    _sleep_until(first)
    full = t0 + trace[todo[batch_size - 1]].arrival_s if len(todo) >= batch_size else float("inf")
    _sleep_until(min(full, first + max_wait_s))
    now = time.perf_counter()
    return [i for i in todo[:batch_size] if t0 + trace[i].arrival_s <= now]


def run_static(model, trace: Sequence[Request], batch_size: int, max_wait_s: float) -> Replay:
    """Static batching: a batch runs to its end before the next starts. Prompts are left-padded with an
    attention mask and the batch generates max(output_len) tokens; each request keeps its own first
    `output_len`. A request gets its first token with the batch's first step, but its response is complete
    only when the whole batch finishes, so its last token is stamped then (the cost static batching pays)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not max_wait_s >= 0:
        raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
    timings: list[RequestTiming | None] = [None] * len(trace)
    outputs: list[list[int]] = [[] for _ in trace]
    todo = _by_arrival(trace)
    pad = _pad_id(model)
    t0 = time.perf_counter()
    while todo:
        batch = _next_batch(trace, todo, t0, batch_size, max_wait_s)
        todo = todo[len(batch):]
        width = max(trace[i].prompt_len for i in batch)
        steps = max(trace[i].output_len for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n = trace[i].prompt_len
            ids[row, width - n:] = torch.tensor(trace[i].prompt_ids)
            mask[row, width - n:] = 1
        streamer = TimestampStreamer()  # one stamp per decoding step, shared by the whole batch
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             do_sample=False, max_new_tokens=steps, min_new_tokens=steps, pad_token_id=pad,
                             streamer=streamer)
        for row, i in enumerate(batch):
            k = trace[i].output_len
            times = streamer.times[:k - 1] + streamer.times[-1:]
            timings[i] = RequestTiming(start=t0 + trace[i].arrival_s, token_times=times,
                                       prompt_tokens=trace[i].prompt_len)
            outputs[i] = out[row, width:width + k].tolist()
    return timings, outputs


# ---------------------------------------------------------------- labkit's engine

def run_engine(engine, trace: Sequence[Request]) -> Replay:
    """Drive `engine` in real time: add every request whose arrival has come, step while there is work, and
    sleep until the next arrival when idle. Timings come from the engine's own per-token stamps. A request
    the engine rejected or cancelled comes back with no tokens (`summarize` leaves it out of the metrics)."""
    order = _by_arrival(trace)
    index_of: dict[int, int] = {}  # engine seq id -> position in the trace
    seqs: dict[int, object] = {}
    nxt = 0
    t0 = time.perf_counter()
    while nxt < len(order) or engine.has_unfinished():
        now = time.perf_counter()
        while nxt < len(order) and t0 + trace[order[nxt]].arrival_s <= now:
            r = trace[order[nxt]]
            params = SamplingParams(max_tokens=r.output_len, ignore_eos=True)
            sid = engine.add_request(list(r.prompt_ids), params, arrival_time=t0 + r.arrival_s)
            index_of[sid] = order[nxt]
            nxt += 1
        if engine.has_unfinished():
            for seq in engine.step():
                seqs[seq.seq_id] = seq
        elif nxt < len(order):
            _sleep_until(t0 + trace[order[nxt]].arrival_s)
    timings: list[RequestTiming | None] = [None] * len(trace)
    outputs: list[list[int]] = [[] for _ in trace]
    for sid, i in index_of.items():
        seq = seqs.get(sid) or engine.get(sid)  # a request rejected at add_request never comes out of step()
        timings[i], outputs[i] = seq.to_request_timing(), list(seq.output_token_ids)
    return timings, outputs


# ---------------------------------------------------------------- transformers' continuous batching

def _hf_manager(model, trace: Sequence[Request], page_size: int, num_blocks: int | None, max_batch_tokens: int | None,
                max_requests_per_batch: int | None):
    """Start transformers' ContinuousBatchingManager. By default its cache holds as many of the trace's longest
    requests as may run at once (all of them, or `max_requests_per_batch`), so it never has to evict."""
    if not hasattr(model, "init_continuous_batching"):
        import transformers

        raise Unavailable(f"transformers {transformers.__version__} has no continuous batching for "
                          f"{type(model).__name__} (needs model.init_continuous_batching)")
    try:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError as e:
        raise Unavailable(f"transformers' continuous batching could not be imported: {e}") from e
    if num_blocks is None:
        per_request = max(-(-(r.prompt_len + r.output_len) // page_size) for r in trace)
        num_blocks = per_request * min(len(trace), max_requests_per_batch or len(trace))
    longest = max(r.prompt_len for r in trace)
    gen = GenerationConfig(do_sample=False, max_new_tokens=max(r.output_len for r in trace), eos_token_id=-1,
                           pad_token_id=_pad_id(model))
    cb = ContinuousBatchingConfig(page_size=page_size, num_blocks=num_blocks,
                                  max_batch_tokens=max_batch_tokens or max(2048, longest),
                                  max_requests_per_batch=max_requests_per_batch, allow_block_sharing=False)
    try:
        manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
        manager.start()
    except Exception as e:  # any refusal here (attention implementation, device, model type) is the reason
        raise Unavailable(f"transformers' continuous batching did not start: {type(e).__name__}: {e}") from e
    return manager


def run_hf_continuous(model, trace: Sequence[Request], page_size: int = 64, num_blocks: int | None = None,
                      max_batch_tokens: int | None = None, max_requests_per_batch: int | None = None) -> Replay:
    """transformers' own continuous batching (`ContinuousBatchingManager`, what `generate_batch` uses) fed in
    real time: requests are added as they arrive and its background thread schedules them. Token stamps are
    its own (perf_counter, as ours). `max_requests_per_batch` plays the part of the other servers' batch size;
    `page_size` / `num_blocks` / `max_batch_tokens` size its paged cache and its per-step token budget.
    Raises `Unavailable` with the reason if it cannot run here."""
    order = _by_arrival(trace)
    manager = _hf_manager(model, trace, page_size, num_blocks, max_batch_tokens, max_requests_per_batch)
    index_of: dict[str, int] = {}
    results: dict[str, object] = {}
    nxt = 0
    try:
        t0 = time.perf_counter()
        while len(results) < len(trace):
            now = time.perf_counter()
            while nxt < len(order) and t0 + trace[order[nxt]].arrival_s <= now:
                r = trace[order[nxt]]
                rid = manager.add_request(list(r.prompt_ids), request_id=f"r{order[nxt]}", max_new_tokens=r.output_len,
                                          record_timestamps=True, eos_token_id=-1)
                if rid is None:
                    raise Unavailable(f"transformers' continuous batching refused request {order[nxt]}")
                index_of[rid] = order[nxt]
                nxt += 1
            wait = t0 + trace[order[nxt]].arrival_s - time.perf_counter() if nxt < len(order) else 0.5
            result = manager.get_result(timeout=max(min(wait, 0.5), 0.001))
            if result is not None and result.is_finished():
                if result.error is not None:
                    raise Unavailable(f"transformers' continuous batching failed a request: {result.error}")
                results[result.request_id] = result
            elif result is None and not manager.is_running():
                raise Unavailable("transformers' continuous batching stopped: "
                                  f"{manager.background_thread_status.fatal_error}")
    finally:
        manager.stop(block=True, timeout=10)
        manager.destroy()
    timings: list[RequestTiming | None] = [None] * len(trace)
    outputs: list[list[int]] = [[] for _ in trace]
    for rid, i in index_of.items():
        res = results[rid]
        timings[i] = RequestTiming(start=t0 + trace[i].arrival_s, token_times=list(res.timestamps or []),
                                   prompt_tokens=trace[i].prompt_len)
        outputs[i] = list(res.generated_tokens)
    return timings, outputs
