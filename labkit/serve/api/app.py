"""The ASGI app: OpenAI's routes over one engine, behind a guard that owns the request's bytes and its admission.

`create_app` builds the FastAPI routes (POST /v1/completions and /v1/chat/completions, GET /v1/models, /health,
/metrics) and wraps them in `ServedApp`, which every HTTP request passes first. It reads the body itself with a
limit: a body over `max_body_bytes` (declared by Content-Length or counted as chunks arrive) is answered 413
after the rest of it is read and dropped (bounded), because closing a socket that still holds unread data makes
the kernel reset the connection, and a client still writing would see that reset instead of the answer. It
counts the requests in flight and drives a graceful shutdown (`drain`): new requests get 503, running ones get a
grace period, the rest end with the error event. Every refused request leaves one log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from labkit.serve.api.answer import Answer, EventStream, new_request_id
from labkit.serve.api.loop import Channel, EngineLoop
from labkit.serve.api.metrics import prometheus_text
from labkit.serve.api.protocol import ApiError, parse_request, printable
from labkit.serve.engine import LLMEngine

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt the course sends; a bigger body is refused (413)
DISCARD_MAX_BYTES = 64 << 20  # a refused body is read and dropped up to this size (beyond: answered, then closed)
DISCARD_MAX_S = 10.0  # ... and for at most this long (a client trickling bytes does not hold the server)
CUT_WAIT_S = 5.0  # after the grace period: how long the cut requests get to write their error events


def log_refusal(scope: dict, e: ApiError) -> None:
    """One log line for a request answered with an error (client input is escaped: one line, valid UTF-8)."""
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "?"
    field = f" param={printable(e.param, 80)}:" if e.param else ""
    log.warning("refused %s %s from %s: %d%s %s", scope.get("method", "?"), printable(scope.get("path", "?"), 200),
                who, e.status, field, printable(e.message))


def error_response(e: ApiError, headers: dict | None = None) -> Response:
    return Response(e.json_bytes(), status_code=e.status, media_type="application/json", headers=headers)


class ServedApp:
    """The guard in front of the routes: body limit, admission (503 while shutting down), requests in flight,
    graceful drain. `engine_loop` is the engine's thread (tests and `python -m labkit serve` read it)."""

    def __init__(self, app, engine_loop: EngineLoop, max_body_bytes: int):
        self.app, self.engine_loop, self.max_bytes = app, engine_loop, max_body_bytes
        self.active = 0  # HTTP requests in flight
        self.draining = False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan: the routes' app starts and stops the engine thread
            return await self.app(scope, receive, send)
        self.active += 1
        try:
            await self._handle(scope, receive, send)
        except asyncio.CancelledError:  # uvicorn cancels what still runs when its shutdown timeout passes
            log.warning("%s %s cut at shutdown: its connection closes", scope["method"], printable(scope["path"]))
        finally:
            self.active -= 1

    async def _handle(self, scope, receive, send) -> None:
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"0")
        size = int(declared) if declared.isdigit() else DISCARD_MAX_BYTES + 1  # h11 has refused any other form
        refusal = None
        if self.draining:
            refusal = ApiError(503, "the server is shutting down: it takes no new requests")
        elif size > self.max_bytes:
            refusal = self._too_big(f"{size} bytes")
        if refusal is not None:  # read the body first (within bounds), unless the client waits for a go-ahead
            sending = headers.get(b"expect", b"").lower() != b"100-continue" and size <= DISCARD_MAX_BYTES
            whole = sending and await self._discard(receive)
            return await self._refuse(scope, send, refusal, close=self.draining or not whole)
        body, more = bytearray(), True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                whole = not more or await self._discard(receive)
                too_big = self._too_big(f"more than {self.max_bytes} bytes")
                return await self._refuse(scope, send, too_big, close=not whole)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect the handlers watch for

        await self.app(scope, replay, send)

    def _too_big(self, size: str) -> ApiError:
        return ApiError(413, f"the request body ({size}) is over this server's limit of {self.max_bytes} bytes "
                             "(python -m labkit serve --max-body-bytes)")

    @staticmethod
    async def _discard(receive) -> bool:
        """Read and drop the rest of the request body, up to DISCARD_MAX_BYTES and DISCARD_MAX_S, so that the
        answer reaches a client that is still sending. True when the whole body was read."""
        seen, deadline = 0, time.monotonic() + DISCARD_MAX_S
        while seen <= DISCARD_MAX_BYTES:
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                return False
            if msg["type"] == "http.disconnect":
                return False
            seen += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                return True
        return False

    @staticmethod
    async def _refuse(scope, send, e: ApiError, close: bool) -> None:
        log_refusal(scope, e)
        body = e.json_bytes()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": e.status,
                    "headers": headers + ([(b"connection", b"close")] if close else [])})
        await send({"type": "http.response.body", "body": body})

    async def drain(self, grace_s: float) -> None:
        """A graceful shutdown: refuse new requests (503), give those in flight `grace_s` seconds to finish, then
        end the rest with the error event (one log line each) and give them CUT_WAIT_S to write it."""
        if self.draining:
            return
        self.draining = True
        if self.active:
            log.warning("shutting down: %d request(s) in flight get up to %.1f s to finish; new ones are refused",
                        self.active, grace_s)
        if not await self._settled(grace_s):
            await asyncio.to_thread(self.engine_loop.stop)
            await self._settled(CUT_WAIT_S)

    async def _settled(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.active


def create_app(engine: LLMEngine, model_name: str, tokenizer=None, max_body_bytes: int = MAX_BODY_BYTES) -> ServedApp:
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
    async def _api_error(request: Request, e: ApiError):
        if not e.logged:
            log_refusal(request.scope, e)
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):  # 404 for an unknown path, 405: in the same shape
        return await _api_error(request, ApiError(e.status_code, f"{e.detail}: {request.method} {request.url.path}"))

    @app.get("/health")
    async def health():
        if not loop_thread.alive:
            raise ApiError(503, loop_thread.closed_message())
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "labkit", "max_model_len": max_model_len,
                                            "vocab_size": engine.vocab_size}]}  # token-id prompts: [0, vocab_size)

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
            raise ApiError(503, loop_thread.closed_message())
        request_id = new_request_id(kind)
        ch = Channel(asyncio.get_running_loop(), request_id)
        loop_thread.add(ch, parsed.prompt_ids, parsed.params)
        try:
            first = await ch.queue.get()
        except asyncio.CancelledError:  # the server is stopping this handler: the engine must not go on alone
            loop_thread.cancel(ch)
            raise
        if first[0] == "refused":
            raise ApiError(first[1], first[3], first[2])
        if first[0] == "failed":
            raise ApiError(503, first[1], logged=True)
        answer = Answer(kind, model_name, tokenizer, first[1], request_id)
        if parsed.stream:
            return EventStream(answer.stream(ch, loop_thread, parsed.include_usage), media_type="text/event-stream",
                               headers={"cache-control": "no-cache"})
        return JSONResponse(await answer.collect(ch, loop_thread, request.receive))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, "chat")

    return ServedApp(app, loop_thread, max_body_bytes)
