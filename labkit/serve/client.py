"""The course's serving benchmark over HTTP: replay a `labkit.serve.workload` trace against any OpenAI-compatible
server (labkit's own, vLLM, llama.cpp's server, Ollama, TGI) and get the same `RequestTiming`s, so
`labkit.core.bench.summarize` gives the metrics the course computes in process (TTFT, TPOT, ITL, E2E, goodput).

    info = probe(url)                                    # reachable? which model? does it take ignore_eos?
    replay = run(url, info["model"], trace, extra=info["extra"])
    replay.summary()                                     # summarize(...) + sent, failed and the errors by kind

Each request is sent at its arrival offset with `stream: true`; every chunk that carries a token is stamped on
arrival. `RequestTiming.start` is the scheduled send time, as in the in-process replay, so TTFT includes any
wait. A request that fails (refused, cut off, timed out, server down) is kept with no tokens and its error:
`summarize` counts it in `failed`, never averaging over the survivors alone.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from labkit.core.bench import RequestTiming, summarize

if TYPE_CHECKING:  # a trace is any sequence of objects with request_id, arrival_s, prompt_ids, output_len
    from labkit.serve.workload import Request


class ServerUnreachable(RuntimeError):
    """Nothing answers at the URL (or not as an OpenAI-compatible server); the message says what happened."""


@dataclass
class HttpRequestResult:
    """One request over HTTP: its timing (no token times when it failed), the tokens the server said it sent
    (`usage.completion_tokens`, when reported), the token ids (servers that return them, such as labkit's)."""

    timing: RequestTiming
    error: str | None = None
    reported_tokens: int | None = None
    token_ids: list[int] = field(default_factory=list)
    wanted_tokens: int = 0


@dataclass
class HttpReplay:
    url: str
    model: str
    results: list[HttpRequestResult]
    extra: dict

    @property
    def timings(self) -> list[RequestTiming]:
        return [r.timing for r in self.results]

    @property
    def errors(self) -> dict[str, int]:
        """How many requests failed with each message."""
        return dict(collections.Counter(r.error for r in self.results if r.error).most_common())

    @property
    def outputs(self) -> list[list[int]]:
        return [r.token_ids for r in self.results]

    def summary(self, slo_ms: dict | None = None) -> dict:
        """`summarize` over every request sent, plus `sent` and `errors`; when none completed, the counts and
        the errors alone (no metric is made up). `output_len_mismatch` counts completed requests that got another
        number of tokens than the trace asked for (a server that ignored ignore_eos / min_tokens)."""
        n = len(self.results)
        base = {"sent": n, "errors": self.errors, "extra_fields_sent": sorted(self.extra)}
        ok = [r for r in self.results if r.error is None]
        if not ok:
            return {**base, "completed": 0, "failed": n}
        m = summarize([r.timing if r.error is None else RequestTiming(r.timing.start) for r in self.results],
                      slo_ms=slo_ms)
        m.update(base)
        m["failed"] = n - len(ok)  # a request cut off after some tokens failed too
        m["completed"] = len(ok)
        m["output_len_mismatch"] = sum(r.timing.output_tokens != r.wanted_tokens for r in ok)
        return m

    def describe(self) -> str:
        """One paragraph for a person: how many failed and why, never only the survivors' averages."""
        s = self.summary()
        text = f"{s['completed']} of {s['sent']} requests completed against {self.url} (model {self.model!r})"
        if s["failed"]:
            worst = "; ".join(f"{k} ({v}x)" for k, v in list(self.errors.items())[:3])
            text += f"; {s['failed']} FAILED: {worst}. Metrics below cover the completed ones only"
        if s.get("output_len_mismatch"):
            text += (f"; {s['output_len_mismatch']} got another number of tokens than asked (the server did not take "
                     "ignore_eos / min_tokens), so its lengths are the server's, not the trace's")
        return text + "."


# ---------------------------------------------------------------- talking to a server

def _base(url: str) -> str:
    """The server's root: 'http://host:8000', 'http://host:8000/' and 'http://host:8000/v1' all mean the same."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    return url.removesuffix("/v1")


def _why(e: Exception, url: str, timeout_s: float) -> str:
    """A short, stable message for a failed request (stable so that failures group by kind)."""
    if isinstance(e, httpx.ConnectError):
        return f"could not connect to {url} (connection refused: is the server running?)"
    if isinstance(e, httpx.ConnectTimeout):
        return f"connecting to {url} timed out after {timeout_s:g} s"
    if isinstance(e, httpx.ReadTimeout):
        return f"no data from the server for {timeout_s:g} s (timed out: server too slow or stuck)"
    if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
        return f"the server closed the connection mid-answer ({type(e).__name__})"
    if isinstance(e, httpx.HTTPError):
        return f"{type(e).__name__}: {e}"
    return f"{type(e).__name__}: {e}"


def _error_text(status: int, body: bytes) -> str:
    try:
        err = json.loads(body)["error"]
        msg = err["message"] if isinstance(err, dict) else str(err)
    except (ValueError, KeyError, TypeError):
        msg = body.decode("utf-8", "replace").strip()[:200] or "(empty body)"
    return f"HTTP {status}: {msg}"


def _payload(model: str, r: Request, tokenizer, extra: dict, temperature: float) -> dict:
    prompt = tokenizer.decode(list(r.prompt_ids)) if tokenizer is not None else list(r.prompt_ids)
    body = {"model": model, "prompt": prompt, "max_tokens": r.output_len, "temperature": temperature,
            "stream": True, "stream_options": {"include_usage": True}}
    for k, v in extra.items():
        body[k] = r.output_len if v == "output_len" else v
    return body


def _tokens_in(chunk: dict) -> tuple[list[int] | None, int]:
    """Token ids (when the server sends them) and how many tokens a streamed chunk carries: labkit sends
    `token_ids`; otherwise a chunk with text counts as one token (as vLLM's benchmark counts)."""
    choices = chunk.get("choices") or []
    if not choices:
        return None, 0
    c = choices[0]
    if isinstance(c.get("token_ids"), list):
        return c["token_ids"], len(c["token_ids"])
    text = c.get("text")
    if text is None:
        text = (c.get("delta") or {}).get("content")
    return None, 1 if text else 0


async def _one(client: httpx.AsyncClient, base: str, model: str, r: Request, t0: float, tokenizer, extra: dict,
               temperature: float, timeout_s: float, limit: asyncio.Semaphore | None) -> HttpRequestResult:
    start = t0 + r.arrival_s
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    res = HttpRequestResult(RequestTiming(start=start, prompt_tokens=r.prompt_len), wanted_tokens=r.output_len)
    body = _payload(model, r, tokenizer, extra, temperature)
    acquired = False
    try:
        if limit is not None:
            await limit.acquire()
            acquired = True
        async with client.stream("POST", f"{base}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                res.error = _error_text(resp.status_code, await resp.aread())
                return res
            done = False
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                now = time.perf_counter()
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = f"error event in the stream: {_error_text(200, data.encode()).split(': ', 1)[1]}"
                    return res
                ids, n = _tokens_in(chunk)
                res.timing.token_times += [now] * n
                res.token_ids += ids or []
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    res.reported_tokens = int(usage["completion_tokens"])
                if usage and usage.get("prompt_tokens") is not None:  # the server's count (text is re-tokenized)
                    res.timing.prompt_tokens = int(usage["prompt_tokens"])
            if not done:
                res.error = "the stream ended before data: [DONE] (answer cut off)"
            elif not res.timing.token_times:
                res.error = "the server answered with no tokens"
    except (httpx.HTTPError, OSError) as e:
        res.error = _why(e, base, timeout_s)
    except (ValueError, KeyError, TypeError) as e:
        res.error = f"a streamed chunk was not OpenAI-style JSON ({type(e).__name__}: {str(e)[:120]})"
    finally:
        if acquired:
            limit.release()
    return res


async def replay_async(url: str, model: str, trace: Sequence[Request], *, tokenizer=None, extra: dict | None = None,
                       temperature: float = 0.0, timeout_s: float = 60.0, max_concurrency: int | None = None,
                       progress: bool = False) -> HttpReplay:
    """Send every request of `trace` at its arrival offset; results in trace order. `extra` adds fields to each
    body (the value "output_len" stands for the request's own output length, e.g. {"ignore_eos": True,
    "min_tokens": "output_len"}). With a `tokenizer`, prompts go as text (its decoding of the trace's ids), else
    as token-id lists. `timeout_s` bounds connecting and each wait for the next chunk."""
    from labkit.core.progress import tqdm

    if not trace:
        raise ValueError("the trace is empty")
    base = _base(url)
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    limits = httpx.Limits(max_connections=max_concurrency or len(trace), max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(_one(client, base, model, r, t0, tokenizer, extra or {}, temperature,
                                            timeout_s, limit)) for r in trace]
        with tqdm(total=len(tasks), desc="requests over HTTP", disable=not progress) as bar:
            for t in asyncio.as_completed(tasks):
                await t
                bar.update(1)
    return HttpReplay(base, model, [t.result() for t in tasks], dict(extra or {}))


def _in_own_loop(coro):
    """Run a coroutine to the end from synchronous code, also inside Jupyter (whose loop is already running in
    this thread: then a short-lived thread gets a loop of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def run(url: str, model: str, trace: Sequence[Request], **kw) -> HttpReplay:
    """`replay_async` from synchronous code (a script, a notebook cell, a `run_rounds` candidate)."""
    return _in_own_loop(replay_async(url, model, trace, **kw))


# ---------------------------------------------------------------- before a run: is anyone there?

EXTRA = {"ignore_eos": True, "min_tokens": "output_len"}  # vLLM's fields that fix the output length


def probe(url: str, model: str | None = None, timeout_s: float = 10.0, prompt=None) -> dict:
    """Check the server before a run: GET /v1/models (reachable, which models), then one 2-token completion with
    `ignore_eos` / `min_tokens`; a server that refuses those fields is probed again without them. Returns
    {"url", "models", "model", "extra", "note"}; raises ServerUnreachable with the reason when nobody answers
    as an OpenAI-compatible server would. `prompt` (default: token ids [1, 2, 3]) is what the probe sends."""
    base = _base(url)
    try:
        with httpx.Client(timeout=timeout_s) as client:
            resp = client.get(f"{base}/v1/models")
            if resp.status_code != 200:
                raise ServerUnreachable(f"{base}/v1/models answered {_error_text(resp.status_code, resp.content)}: "
                                        "is this an OpenAI-compatible server?")
            try:
                models = [m["id"] for m in resp.json()["data"]]
            except (ValueError, KeyError, TypeError):
                raise ServerUnreachable(f"{base}/v1/models did not answer with an OpenAI model list: "
                                        f"{resp.text[:200]!r}") from None
            if model is None:
                if not models:
                    raise ServerUnreachable(f"{base} serves no model")
                model = models[0]
            elif models and model not in models:
                raise ServerUnreachable(f"{base} does not serve {model!r}; it serves {models}")
            note, extra = "", dict(EXTRA)
            body = {"model": model, "prompt": prompt if prompt is not None else [1, 2, 3], "max_tokens": 2,
                    "temperature": 0.0}
            r = client.post(f"{base}/v1/completions", json={**body, "ignore_eos": True, "min_tokens": 2})
            if r.status_code == 400:
                note = (f"the server refused ignore_eos / min_tokens ({_error_text(400, r.content)}); requests go "
                        "without them, so output lengths are the server's choice")
                extra = {}
                r = client.post(f"{base}/v1/completions", json=body)
            if r.status_code != 200:
                raise ServerUnreachable(f"a 2-token test completion failed: {_error_text(r.status_code, r.content)}")
    except httpx.HTTPError as e:
        raise ServerUnreachable(_why(e, base, timeout_s)) from None
    return {"url": base, "models": models, "model": model, "extra": extra, "note": note}
