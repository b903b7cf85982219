"""One answer in OpenAI's shape: whole (a JSON object) or streamed (server-sent events, a chunk per token).

The completions and the chat endpoints differ only in envelope (`text` against `message`/`delta`), so `Answer`
builds both. It reads the request's `Channel` until the engine says the request finished; a ("failed", reason)
event (the engine stopped, or the server is shutting down past its grace period) ends a stream with
`data: {"error": ...}` then `data: [DONE]`, and a whole answer with a 503 JSON error, so a client always learns
why its answer is short. A client that goes away cancels its request at once (its KV blocks are freed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

from starlette.responses import StreamingResponse

from labkit.serve.api.loop import Channel, EngineLoop
from labkit.serve.api.protocol import ApiError, Detokenizer


def new_request_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def sse(obj) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


async def wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """Server-sent events that always watch for the client going away while waiting for the next token
    (Starlette does so only for ASGI servers below spec 2.4), so a disconnect cancels the request at once."""

    async def __call__(self, scope, receive, send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        watching = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (streaming, watching):
                t.cancel()
            await asyncio.gather(streaming, watching, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # its `finally` cancels the request now, not at GC


class Answer:
    """One answer's JSON, streamed (a chunk per token) or whole, in the completions or the chat shape."""

    def __init__(self, kind: str, model_name: str, tokenizer, prompt_tokens: int, request_id: str):
        self.kind, self.model, self.tokenizer, self.prompt_tokens = kind, model_name, tokenizer, prompt_tokens
        self.id = request_id
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

    async def stream(self, ch: Channel, loop_thread: EngineLoop, include_usage: bool):
        detok, ended = Detokenizer(self.tokenizer), False
        try:
            while not ended:
                event = await ch.queue.get()
                if event[0] == "failed":  # the error event, then the end of the stream
                    ended = True
                    yield sse(ApiError(503, event[1]).body())
                    yield sse("[DONE]")
                    return
                _, ids, finish = event
                ended = finish is not None
                for i, t in enumerate(ids):
                    last = ended and i == len(ids) - 1
                    yield sse(self._chunk(detok.add(t), [t], finish if last else None, first=not self.ids))
                    self.ids.append(t)
                if ended and not ids:
                    yield sse(self._chunk("", [], finish, first=not self.ids))
            if include_usage:
                yield sse({**self._envelope([], chunk=True), "usage": self._usage()})
            yield sse("[DONE]")
        finally:
            if not ended:  # the client went away (or the stream was cancelled): free the engine's blocks now
                loop_thread.cancel(ch)

    async def collect(self, ch: Channel, loop_thread: EngineLoop, receive) -> dict:
        """Wait for the whole answer; a client that disconnects meanwhile cancels the request."""
        gone = asyncio.ensure_future(wait_disconnect(receive))
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
                    raise ApiError(503, event[1], logged=True)
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
