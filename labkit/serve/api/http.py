"""labkit's engine behind an OpenAI-compatible HTTP API (what vLLM, llama.cpp's server, Ollama and TGI speak).

    app = create_app(engine, "stdlib-llama-16m", tokenizer)      # a FastAPI app over one LLMEngine
    server = start_in_thread(app)                                 # uvicorn on 127.0.0.1, a free port
    ...  httpx.post(f"{server.url}/v1/completions", json={...})
    server.stop()

`python -m labkit serve` runs the same app in the foreground. Endpoints: POST /v1/completions,
POST /v1/chat/completions (stream: true gives server-sent events, one chunk per token, then `data: [DONE]`),
GET /v1/models, GET /health, GET /metrics (Prometheus text, names as vLLM's with a `labkit:` prefix).

Threads: the engine is not thread-safe, so exactly one thread (`EngineLoop`) touches it. The event loop hands it
commands (add, cancel) through a thread-safe queue; it steps the engine and sends each request's tokens back
to that request's asyncio queue with `loop.call_soon_threadsafe`. A client that disconnects cancels its request
and the engine frees its KV blocks at once. Bad input is answered 400 (404 for an unknown model, 413 for a body
over the limit, refused before it is parsed) with an OpenAI-style error body naming the field.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import math
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from labkit.serve.engine import EngineConfig, LLMEngine, RequestError
from labkit.serve.sequence import SamplingParams, SequenceStatus

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt the course sends; a bigger body is refused unread
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def engine_config(max_batch: int = 16, kv_cache_gib: float = 1.0, max_model_len: int | None = None,
                  seed: int = 0) -> EngineConfig:
    """The engine `python -m labkit serve` runs (so an in-process replay can use the very same one)."""
    return EngineConfig(max_num_seqs=max_batch, kv_cache_bytes=int(kv_cache_gib * 2**30), max_model_len=max_model_len,
                        seed=seed)


# ---------------------------------------------------------------- errors in OpenAI's shape

class ApiError(Exception):
    """An answer other than 200: HTTP status, message, the request field at fault (OpenAI's `param`)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


# ---------------------------------------------------------------- the engine's thread

class _Channel:
    """One request's way back from the engine thread to the event loop. Events are tuples:
    ("ok", n_prompt_tokens) | ("refused", status, param, message) | ("tokens", ids, finish_reason or None) |
    ("failed", message)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.seq_id: int | None = None  # set by the engine thread when the engine took the request

    def push(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass


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
        self.live: dict[int, _Channel] = {}
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

    def add(self, channel: _Channel, prompt_ids: list[int], params: SamplingParams) -> None:
        with self._lock:
            if self._closed:
                channel.push(("failed", self._closed_message()))
                return
            self.commands.put(("add", channel, prompt_ids, params))

    def cancel(self, channel: _Channel) -> None:
        with self._lock:
            if not self._closed:
                self.commands.put(("cancel", channel))

    def _closed_message(self) -> str:
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
        finally:
            with self._lock:
                self._closed = True
            msg = self._closed_message()
            for sid, ch in list(self.live.items()):
                with contextlib.suppress(Exception):
                    self.engine.cancel(sid)
                ch.push(("failed", msg))
            self.live.clear()
            while True:  # commands that arrived after the last drain: every add gets its answer
                try:
                    cmd = self.commands.get_nowait()
                except queue.Empty:
                    break
                if cmd[0] == "add":
                    cmd[1].push(("failed", msg))
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


# ---------------------------------------------------------------- parsing a request

UNSUPPORTED = {  # OpenAI parameters the engine does not implement: accepted only absent, null or neutral
    "n": (1,), "best_of": (1,), "logprobs": (False,), "top_logprobs": (0,), "echo": (False,), "suffix": ("",),
    "logit_bias": ({},), "stop": ("", []), "presence_penalty": (0,), "frequency_penalty": (0,), "top_p": (1,),
    "seed": (), "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "response_format": ({"type": "text"},), "parallel_tool_calls": (), "top_k": (-1, 0), "min_p": (0,),
    "repetition_penalty": (1,), "use_beam_search": (False,),
}
COMMON = {"model", "max_tokens", "temperature", "stream", "stream_options", "ignore_eos", "min_tokens",
          "stop_token_ids", "user"}
FIELDS = {"completions": COMMON | {"prompt"} | set(UNSUPPORTED),
          "chat": COMMON | {"messages", "max_completion_tokens"} | set(UNSUPPORTED)}


def _same(v, a) -> bool:
    return isinstance(v, bool) == isinstance(a, bool) and v == a


def _int(body: dict, name: str, lo: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ApiError(400, f"{name} must be an integer >= {lo}, got {json.dumps(v)}", name)
    return v


def _bool(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise ApiError(400, f"{name} must be true or false, got {json.dumps(v)}", name)
    return bool(v)


@dataclass
class Parsed:
    """A request as the engine takes it."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


def parse_request(body, kind: str, model_name: str, tokenizer, max_model_len: int) -> Parsed:
    """Check an /v1/completions (`kind="completions"`) or /v1/chat/completions (`"chat"`) body field by field;
    the first problem raises ApiError naming the field. Nothing is converted silently (1.5 is not 1 token)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; this server takes: {', '.join(sorted(FIELDS[kind]))}",
                       unknown[0])
    for name, neutral in UNSUPPORTED.items():
        v = body.get(name)
        if v is not None and not any(_same(v, a) for a in neutral):
            raise ApiError(400, f"{name}={json.dumps(v)} is not supported by labkit's engine (leave it out"
                           + (f" or send {json.dumps(neutral[0])})" if neutral else ")"), name)
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist here; this server serves {model_name!r}", "model",
                       "model_not_found")
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or set(opts) - {"include_usage"}
                             or not isinstance(opts.get("include_usage", False), bool)):
        raise ApiError(400, f'stream_options must be {{"include_usage": true|false}}, got {json.dumps(opts)}',
                       "stream_options")
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature  # OpenAI's default
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ApiError(400, f"temperature must be a number >= 0 (0 is greedy), got {json.dumps(temperature)}",
                       "temperature")
    stops = body.get("stop_token_ids") or []
    if not isinstance(stops, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in stops):
        raise ApiError(400, f"stop_token_ids must be a list of integers, got {json.dumps(stops)}", "stop_token_ids")
    ids = _chat_ids(body.get("messages"), tokenizer, model_name) if kind == "chat" else \
        _prompt_ids(body.get("prompt"), tokenizer, model_name)
    name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = _int(body, name, 1)
    if max_tokens is None:  # chat: the rest of the context, as vLLM does
        max_tokens = max(1, max_model_len - len(ids)) if kind == "chat" else DEFAULT_MAX_TOKENS
    ignore_eos = _bool(body, "ignore_eos")
    min_tokens = _int(body, "min_tokens", 0) or 0
    if min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens ({min_tokens}) must be <= max_tokens ({max_tokens})", "min_tokens")
    if min_tokens == max_tokens:  # EOS and stop tokens cannot end it early: exactly max_tokens, as ignore_eos
        ignore_eos, stops = True, []
    elif min_tokens:
        raise ApiError(400, f"min_tokens={min_tokens} below max_tokens={max_tokens} is not implemented by labkit's "
                       "engine; min_tokens equal to max_tokens (or ignore_eos: true) fixes the output length",
                       "min_tokens")
    params = SamplingParams(max_tokens=max_tokens, temperature=float(temperature), ignore_eos=ignore_eos,
                            stop_token_ids=tuple(stops))
    return Parsed(ids, params, stream, bool((opts or {}).get("include_usage")))


def _prompt_ids(prompt, tokenizer, model_name: str) -> list[int]:
    """A string (with a tokenizer), a list of token ids, or OpenAI's batch form holding one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if prompt is None:
        raise ApiError(400, "prompt is required: a string or a list of token ids", "prompt")
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ApiError(400, f"{model_name} has no tokenizer: send the prompt as a list of token ids", "prompt")
        return list(tokenizer(prompt)["input_ids"])
    if isinstance(prompt, list) and any(isinstance(p, (str, list)) for p in prompt):
        raise ApiError(400, "one prompt per request: send a string or a list of token ids, not a batch", "prompt")
    if not isinstance(prompt, list):
        raise ApiError(400, f"prompt must be a string or a list of token ids, got {type(prompt).__name__}", "prompt")
    return prompt  # ints are checked by the engine (type and vocabulary range)


def _chat_ids(messages, tokenizer, model_name: str) -> list[int]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str) or set(m) - {"role", "content", "name"}:
            raise ApiError(400, f"messages[{i}] must be {{\"role\": \"system\"|\"user\"|\"assistant\", "
                                f"\"content\": a string}}, got {json.dumps(m)[:200]}", f"messages[{i}]")
    if tokenizer is None:
        raise ApiError(400, f"{model_name} has no tokenizer, so no chat template: use /v1/completions with a list "
                            "of token ids", "messages")
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, f"{model_name}'s tokenizer has no chat template: use /v1/completions with a prompt",
                       "messages")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - a template can raise anything (jinja errors, raise_exception)
        raise ApiError(400, f"the chat template refused these messages: {e}", "messages") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------- text out

class Detokenizer:
    """Text as tokens arrive, without re-decoding everything: decode a short window and emit what it adds,
    holding back while a character is incomplete (a byte-level token may end inside a UTF-8 sequence)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def add(self, token_id: int) -> str:
        if self.tokenizer is None:
            return ""
        self.ids.append(token_id)
        dec = self.tokenizer.decode
        prev = dec(self.ids[self.prefix:self.read], skip_special_tokens=True)
        new = dec(self.ids[self.prefix:], skip_special_tokens=True)
        if len(new) > len(prev) and not new.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new[len(prev):]
        return ""


# ---------------------------------------------------------------- the ASGI app

class BodyLimit:
    """Refuse a request body over `max_bytes` with 413 before anything parses it: Content-Length is checked
    first, and a chunked body is counted as it arrives."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send) -> None:
        body = json.dumps(ApiError(413, f"the request body is over this server's limit of {self.max_bytes} bytes")
                          .body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        body, more = bytearray(), True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect the handlers watch for

        await self.app(scope, replay, send)


def _sse(obj) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(engine: LLMEngine, model_name: str, tokenizer=None, max_body_bytes: int = MAX_BODY_BYTES):
    """The OpenAI-compatible app over `engine` (which it then owns: only its EngineLoop thread touches it).
    `model_name` is what clients pass as `model`; with a `tokenizer`, prompts may be strings and answers carry
    text (without one, prompts are token-id lists and `text` is empty; `token_ids` is always in the answer)."""
    loop_thread = EngineLoop(engine)
    max_model_len = engine.scheduler.config.max_model_len

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        loop_thread.start()
        yield
        await asyncio.to_thread(loop_thread.stop)

    app = FastAPI(title="labkit serve", lifespan=lifespan)
    app.state.engine_loop = loop_thread

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):  # 404 for an unknown path, 405: in the same shape
        return _error_response(ApiError(e.status_code, f"{e.detail}: {request.method} {request.url.path}"))

    @app.get("/health")
    async def health():
        if not loop_thread.alive:
            raise ApiError(503, loop_thread._closed_message())
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "labkit", "max_model_len": max_model_len}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(prometheus_text(loop_thread.snapshot, model_name),
                                 media_type="text/plain; version=0.0.4")

    async def generate(request: Request, kind: str):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        parsed = parse_request(body, kind, model_name, tokenizer, max_model_len)
        if not loop_thread.alive:
            raise ApiError(503, loop_thread._closed_message())
        ch = _Channel(asyncio.get_running_loop())
        loop_thread.add(ch, parsed.prompt_ids, parsed.params)
        try:
            first = await ch.queue.get()
        except asyncio.CancelledError:  # the server is stopping this handler: the engine must not go on alone
            loop_thread.cancel(ch)
            raise
        if first[0] == "refused":
            raise ApiError(first[1], first[3], first[2])
        if first[0] == "failed":
            raise ApiError(503, first[1])
        answer = _Answer(kind, model_name, tokenizer, first[1])
        if parsed.stream:
            return _EventStream(answer.stream(ch, loop_thread, parsed.include_usage), media_type="text/event-stream",
                                headers={"cache-control": "no-cache"})
        return JSONResponse(await answer.collect(ch, loop_thread, request.receive))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, "chat")

    class _EventStream(StreamingResponse):
        """Server-sent events that always watch for the client going away while waiting for the next token
        (Starlette does so only for ASGI servers below spec 2.4), so a disconnect cancels the request at once."""

        async def __call__(self, scope, receive, send) -> None:
            streaming = asyncio.ensure_future(self.stream_response(send))
            watching = asyncio.ensure_future(_wait_disconnect(receive))
            try:
                await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (streaming, watching):
                    t.cancel()
                await asyncio.gather(streaming, watching, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self.body_iterator.aclose()  # its `finally` cancels the request now, not at GC

    limited = BodyLimit(app, max_body_bytes)
    limited.engine_loop = loop_thread  # for tests and /metrics-free checks after the server stopped
    return limited


class _Answer:
    """One answer's JSON, streamed (a chunk per token) or whole, in the completions or the chat shape."""

    def __init__(self, kind: str, model_name: str, tokenizer, prompt_tokens: int):
        self.kind, self.model, self.tokenizer, self.prompt_tokens = kind, model_name, tokenizer, prompt_tokens
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.ids: list[int] = []

    def _usage(self) -> dict:
        n = len(self.ids)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}

    def _envelope(self, choices: list, chunk: bool) -> dict:
        obj = ("chat.completion" if self.kind == "chat" else "text_completion") + (".chunk" if chunk and
                                                                                    self.kind == "chat" else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def _chunk(self, text: str, ids: list[int], finish: str | None, first: bool) -> dict:
        if self.kind == "chat":
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {"index": 0, "delta": delta, "token_ids": ids, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "token_ids": ids, "logprobs": None, "finish_reason": finish}
        return self._envelope([choice], chunk=True)

    async def stream(self, ch: _Channel, loop_thread: EngineLoop, include_usage: bool):
        detok, ended = Detokenizer(self.tokenizer), False
        try:
            while not ended:
                event = await ch.queue.get()
                if event[0] == "failed":
                    ended = True
                    yield _sse(ApiError(503, event[1]).body())
                    break
                _, ids, finish = event
                ended = finish is not None
                for i, t in enumerate(ids):
                    last = ended and i == len(ids) - 1
                    yield _sse(self._chunk(detok.add(t), [t], finish if last else None, first=not self.ids))
                    self.ids.append(t)
                if ended and not ids:
                    yield _sse(self._chunk("", [], finish, first=not self.ids))
            if include_usage:
                yield _sse({**self._envelope([], chunk=True), "usage": self._usage()})
            yield _sse("[DONE]")
        finally:
            if not ended:  # the client went away (or the stream was cancelled): free the engine's blocks now
                loop_thread.cancel(ch)

    async def collect(self, ch: _Channel, loop_thread: EngineLoop, receive) -> dict:
        """Wait for the whole answer; a client that disconnects meanwhile cancels the request."""
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        finish = None
        try:
            while finish is None:
                get = asyncio.ensure_future(ch.queue.get())
                done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    loop_thread.cancel(ch)
                    return {}  # nobody is there to read it
                event = get.result()
                if event[0] == "failed":
                    raise ApiError(503, event[1])
                self.ids += event[1]
                finish = event[2]
        finally:
            gone.cancel()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True) if self.tokenizer is not None else ""
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "token_ids": self.ids,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "token_ids": self.ids, "logprobs": None, "finish_reason": finish}
        return {**self._envelope([choice], chunk=False), "usage": self._usage()}


# ---------------------------------------------------------------- /metrics

def prometheus_text(snap: dict, model_name: str) -> str:
    """The engine's numbers in Prometheus' text format, named as vLLM names them (prefix `labkit:`)."""
    label = f'model_name="{model_name}"'
    total = max(snap["blocks_total"], 1)
    rows = [
        ("num_requests_running", "gauge", "Requests in the running batch (holding KV blocks).", snap["running"]),
        ("num_requests_waiting", "gauge", "Requests queued for admission.", snap["waiting"]),
        ("kv_cache_blocks_used", "gauge", "KV-cache blocks held by requests.", snap["blocks_used"]),
        ("kv_cache_blocks_total", "gauge", "KV-cache blocks in all.", snap["blocks_total"]),
        ("kv_cache_usage_perc", "gauge", "Fraction of the KV cache in use (1 = full).", snap["blocks_used"] / total),
        ("generation_tokens_total", "counter", "Tokens generated.", snap["generation_tokens"]),
        ("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", snap["prompt_tokens"]),
        ("generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
         snap["tokens_per_s"]),
        ("engine_steps_total", "counter", "Engine steps (one scheduler iteration each).", snap["steps"]),
        ("engine_step_seconds_total", "counter", "Seconds spent inside engine steps.", snap["step_seconds"]),
    ]
    out = []
    for name, kind, doc, value in rows:
        out += [f"# HELP labkit:{name} {doc}", f"# TYPE labkit:{name} {kind}", f"labkit:{name}{{{label}}} {value}"]
    out += ["# HELP labkit:request_success_total Requests that ended, by how they ended.",
            "# TYPE labkit:request_success_total counter"]
    for reason in sorted(set(snap["ended"]) | {"length", "stop", "cancelled", "rejected"}):
        out.append(f'labkit:request_success_total{{{label},finished_reason="{reason}"}} {snap["ended"].get(reason, 0)}')
    return "\n".join(out) + "\n"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text back to {name or name{finished_reason}: value} (for tests and the notebook)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        name, _, labels = key.partition("{")
        reason = next((p.split("=", 1)[1].strip('"') for p in labels.rstrip("}").split(",")
                       if p.startswith("finished_reason=")), None)
        out[f"{name}{{{reason}}}" if reason else name] = float(value)
    return out


# ---------------------------------------------------------------- running it

def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound socket (port 0: a free one the OS picks, so nothing races for it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app, log_level: str):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="on"))


@dataclass
class BackgroundServer:
    """uvicorn serving an app in a thread of this process (tests, notebooks); `stop()` ends it."""

    server: object
    thread: threading.Thread
    url: str

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0,
                    log_level: str = "warning") -> BackgroundServer:
    """Serve any ASGI app from a background thread on `host` (loopback by default) and a free port."""
    sock = bind(host, port)
    server = _uvicorn_server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="labkit-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start within {timeout_s:.0f} s")
        time.sleep(0.01)
    return BackgroundServer(server, thread, _url(sock))


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          parent_pid: int | None = None) -> None:
    """Serve in the foreground until Ctrl+C. Prints `listening on URL` once the socket is bound (with port 0,
    the port the OS picked), which `launch` waits for. With `parent_pid`, it also stops when that process is gone
    (a notebook kernel that died must not leave a server behind)."""
    sock = bind(host, port)
    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach this machine can use the server "
              "(it has no authentication)", file=sys.stderr, flush=True)
    server = _uvicorn_server(app, log_level)
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(server, parent_pid), daemon=True).start()
    print(f"labkit serve: listening on {_url(sock)}", flush=True)
    server.run(sockets=[sock])


def _exit_with_parent(server, parent_pid: int) -> None:
    while not server.should_exit and os.getppid() == parent_pid:
        time.sleep(1.0)
    server.should_exit = True


@dataclass
class ServerProcess:
    """`python -m labkit serve` in a child process (what a deployment looks like: the client is elsewhere)."""

    process: subprocess.Popen
    url: str

    def stop(self, timeout_s: float = 30.0) -> int:
        """Ctrl+C-like stop (SIGTERM), then a kill if it does not exit in time. Returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(args: list[str], timeout_s: float = 300.0, env: dict | None = None) -> ServerProcess:
    """Start `python -m labkit serve --port 0 <args>` (a list of arguments, never a shell string) and wait until
    it answers /health. Raises RuntimeError with the server's last output if it exits or does not come up."""
    import httpx

    cmd = [sys.executable, "-m", "labkit", "serve", "--port", "0", "--log-level", "warning",
           "--parent-pid", str(os.getpid()), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    lines: collections.deque = collections.deque(maxlen=40)
    found: list[str] = []

    def read() -> None:  # the child's output, drained so it never blocks on a full pipe
        for line in proc.stdout:
            lines.append(line.rstrip())
            if not found and line.startswith("labkit serve: listening on "):
                found.append(line.split(" on ", 1)[1].strip())
        proc.stdout.close()  # EOF: the server has exited

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if found:
            try:
                if httpx.get(f"{found[0]}/health", timeout=2).status_code == 200:
                    server = ServerProcess(proc, found[0])
                    atexit.register(server.stop, 10)  # a normal exit of this process stops it too
                    return server
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    ServerProcess(proc, "").stop(5)
    tail = "\n".join(lines)
    why = f"exited with code {proc.returncode}" if proc.returncode not in (None, -15) else \
        f"did not answer /health within {timeout_s:.0f} s"
    raise RuntimeError(f"`{' '.join(cmd[1:])}` {why}; its last output:\n{tail}")
