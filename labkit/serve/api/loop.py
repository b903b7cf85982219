"""The engine's own thread: the only code that touches the engine, fed by the event loop through a queue.

The engine is not thread-safe and a step blocks for milliseconds to seconds, so it cannot run on the event loop.
`EngineLoop` owns it: the event loop hands it commands (add, cancel) through a thread-safe queue; it steps the
engine while there is work and sends each request's tokens back to that request's `Channel` (an asyncio queue,
fed with `loop.call_soon_threadsafe`). A client that disconnects cancels its request and the engine frees its KV
blocks at once. When the loop stops (a graceful shutdown past its grace period, or a step that raised), every
request still in it ends with a ("failed", reason) event, logged one line per request, so that each client gets
an error it can read instead of a cut connection. It also keeps the numbers /metrics shows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time

from labkit.serve.engine import LLMEngine, RequestError
from labkit.serve.sequence import SamplingParams, SequenceStatus

log = logging.getLogger(__name__)


class Channel:
    """One request's way back from the engine thread to the event loop. Events are tuples:
    ("ok", n_prompt_tokens) | ("refused", status, param, message) | ("tokens", ids, finish_reason or None) |
    ("failed", message): the request ended without its answer (the loop logged it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request_id: str = ""):
        self.loop, self.request_id = loop, request_id
        self.queue: asyncio.Queue = asyncio.Queue()
        self.seq_id: int | None = None  # set by the engine thread when the engine took the request

    def push(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass

    def fail(self, message: str, tokens: int | None = None) -> None:
        """End this request with `message`, in one log line."""
        done = "" if tokens is None else f" after {tokens} generated token(s)"
        log.warning("request %s ended%s: %s", self.request_id or "?", done, message)
        self.push(("failed", message))


def _rejected_param(reason: str) -> str:
    """Which field a rejection is about (the scheduler's reasons name the prompt or max_tokens)."""
    return "max_tokens" if "max_tokens" in reason or "KV blocks" in reason else "prompt"


class EngineLoop:
    """The only thread that touches the engine: drains the command queue, steps while there is work, sends
    tokens back, keeps the numbers /metrics shows. Ended requests are dropped from the engine's table (a server
    runs for days; `LLMEngine.requests` would otherwise keep every request ever served)."""

    RATE_WINDOW_S = 10.0
    KEEP_STATS = 1024  # step records kept (LLMEngine.stats grows by one per step)

    def __init__(self, engine: LLMEngine, idle_wait_s: float = 0.05):
        self.engine, self.idle_wait_s = engine, idle_wait_s
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.live: dict[int, Channel] = {}
        self.error: str | None = None
        self.ended: collections.Counter = collections.Counter()  # requests by how they ended
        self.generation_tokens = 0
        self.prompt_tokens = 0
        self.steps, self.step_seconds = 0, 0.0  # engine steps and the time spent inside them
        self._recent: collections.deque = collections.deque()  # (time, tokens) per step, for tokens/s
        self._started = time.perf_counter()
        self._closed = False
        self._lock = threading.Lock()  # orders "closed" against late commands
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labkit-engine", daemon=True)
        self.snapshot: dict = {}
        self._update_snapshot()

    # -------------------------------------------------- called from the event loop
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the current step, cancel every request left (their clients get an error event), stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def add(self, channel: Channel, prompt_ids: list[int], params: SamplingParams) -> None:
        with self._lock:
            if self._closed:
                channel.fail(self.closed_message())
                return
            self.commands.put(("add", channel, prompt_ids, params))

    def cancel(self, channel: Channel) -> None:
        with self._lock:
            if not self._closed:
                self.commands.put(("cancel", channel))

    def closed_message(self) -> str:
        return f"the engine stopped: {self.error}" if self.error else "the server is shutting down"

    # -------------------------------------------------- the engine's thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    self._step()
                self._update_snapshot()
        except Exception as e:  # noqa: BLE001 - any failure of a step ends the server's service, with the reason
            self.error = f"{type(e).__name__}: {e}"
            log.error("the engine stopped: %s", self.error, exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            with self._lock:
                self._closed = True
            msg = self.closed_message()
            for sid, ch in list(self.live.items()):  # every request still here: its client gets the reason
                seq = self.engine.requests.get(sid)
                with contextlib.suppress(Exception):
                    self.engine.cancel(sid)
                ch.fail(msg, seq.num_output_tokens if seq is not None else None)
            self.live.clear()
            while True:  # commands that arrived after the last drain: every add gets its answer
                try:
                    cmd = self.commands.get_nowait()
                except queue.Empty:
                    break
                if cmd[0] == "add":
                    cmd[1].fail(msg)
            self._update_snapshot()

    def _drain(self, block: bool) -> None:
        try:
            cmd = self.commands.get(timeout=self.idle_wait_s) if block else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._do(cmd)
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return

    def _do(self, cmd: tuple) -> None:
        if cmd[0] == "cancel":
            sid = cmd[1].seq_id
            if sid is not None and sid in self.live:
                self.engine.cancel(sid)
                self._end(sid)
            return
        _, ch, prompt_ids, params = cmd
        try:
            sid = self.engine.add_request(prompt_ids, params)
        except RequestError as e:
            field = "prompt" if e.field == "prompt_ids" else e.field
            ch.push(("refused", 400, field, str(e).split(": ", 1)[-1]))
            return
        seq = self.engine.get(sid)
        if seq.status is SequenceStatus.REJECTED:
            reason = seq.finish_reason or "rejected"
            self.ended["rejected"] += 1
            self.engine.requests.pop(sid, None)
            ch.push(("refused", 400, _rejected_param(reason), f"this request can never run here: "
                                                               f"{reason.removeprefix('rejected: ')}"))
            return
        ch.seq_id = sid
        self.live[sid] = ch
        self.prompt_tokens += seq.num_prompt_tokens
        ch.push(("ok", seq.num_prompt_tokens))

    def _step(self) -> None:
        e = self.engine
        before = {sid: e.requests[sid].num_output_tokens for sid in self.live}
        t0 = time.perf_counter()
        e.step()
        self.steps += 1
        self.step_seconds += time.perf_counter() - t0
        new_total = 0
        for sid, n in before.items():
            seq = e.requests[sid]
            new = seq.output_token_ids[n:]
            new_total += len(new)
            if seq.is_finished:
                self.live[sid].push(("tokens", list(new), seq.finish_reason))
                self._end(sid)
            elif new:
                self.live[sid].push(("tokens", list(new), None))
        self.generation_tokens += new_total
        self._recent.append((time.perf_counter(), new_total))
        if len(e.stats) > 2 * self.KEEP_STATS:
            del e.stats[:-self.KEEP_STATS]

    def _end(self, sid: int) -> None:
        seq = self.engine.requests.pop(sid)
        self.live.pop(sid, None)
        self.ended["cancelled" if seq.status is SequenceStatus.CANCELLED else seq.finish_reason or "unknown"] += 1

    def _update_snapshot(self) -> None:
        """The numbers /metrics reads, replaced as one dict (a reader on the event loop never sees half)."""
        now = time.perf_counter()
        while self._recent and self._recent[0][0] < now - self.RATE_WINDOW_S:
            self._recent.popleft()
        window = min(self.RATE_WINDOW_S, max(now - self._started, 1e-9))
        s = self.engine.scheduler
        bm = s.block_manager
        self.snapshot = {"running": s.num_running, "waiting": s.num_waiting, "blocks_total": bm.num_blocks,
                         "blocks_used": bm.num_blocks - bm.num_free_blocks,
                         "generation_tokens": self.generation_tokens, "prompt_tokens": self.prompt_tokens,
                         "tokens_per_s": sum(n for _, n in self._recent) / window, "ended": dict(self.ended),
                         "steps": self.steps, "step_seconds": self.step_seconds,
                         "alive": not self._closed}

