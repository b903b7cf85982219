"""The course's serving benchmark over HTTP: replay a `labkit.serve.workload` trace against any OpenAI-compatible
server (labkit's own, vLLM, llama.cpp's server, Ollama, TGI) and get the same `RequestTiming`s, so
`labkit.core.bench.summarize` gives the metrics the course computes in process (TTFT, TPOT, ITL, E2E, goodput).

    base = check_url(url)                                # a typo fails here, before anything is sent
    info = probe(base)                                   # reachable? which model? does it take ignore_eos?
    vocab, note = token_prompts(info)                    # ids in the vocabulary it states, else text
    replay = run(base, info["model"], trace, extra=info["extra"])
    replay.summary()                                     # summarize(...) + sent, failed and the errors by kind

Each request is sent at its arrival offset with `stream: true`; every chunk that carries a token is stamped on
arrival. `RequestTiming.start` is the scheduled send time, as in the in-process replay, so TTFT includes any
wait. A request that fails (refused, cut off, timed out, server down) is kept with no tokens and its error:
`summarize` counts it in `failed`, never averaging over the survivors alone. Its error names the cause
(connection refused, host not found, timed out after N s, cut off), so failures group by kind.
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

def check_url(url: str) -> str:
    """The server's root from a URL a person typed, or ValueError saying what is wrong with it (before anything is
    sent): 'http://host:8000', 'http://host:8000/' and 'http://host:8000/v1' all mean the same."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"url must be the server's base URL, e.g. http://127.0.0.1:8000, got {url!r}")
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    if any(c.isspace() for c in url):
        raise ValueError(f"url must not contain spaces, got {url!r}")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:  # 'http://[::1' (an unclosed IPv6 bracket), a port that is not a number or too large
        why = ("its port must be a number from 1 to 65535" if "port" in str(e).lower() else
               "an IPv6 address goes in closed brackets, e.g. http://[::1]:8000" if "IPv6" in str(e) else str(e))
        raise ValueError(f"bad url {url!r}: {why}") from None
    if not host:
        raise ValueError(f"bad url {url!r}: no host name (e.g. http://127.0.0.1:8000)")
    if port == 0:
        raise ValueError(f"bad url {url!r}: its port must be a number from 1 to 65535")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"bad url {url!r}: give the server's base URL only (no user@, ?query or #fragment)")
    return url.removesuffix("/v1")


def _oserror(e: BaseException) -> OSError | None:
    """The socket error under an httpx error (httpx wraps httpcore's, which wraps the OSError; the async path adds
    anyio's "All connection attempts failed" over the real one): the first with an errno, else the first."""
    found, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError):
            found.append(e)
        e = e.__cause__ or e.__context__
    return next((x for x in found if x.errno is not None), found[0] if found else None)


def _why(e: Exception, url: str, timeout_s: float) -> str:
    """A short, stable message for a failed request that names the cause (stable so that failures group by kind):
    connection refused, host not found, a host or port that cannot be reached, timed out after N s."""
    import errno
    import socket
    import ssl

    if isinstance(e, httpx.ConnectTimeout):
        return f"connecting to {url} timed out after {timeout_s:g} s (is the host right? a firewall in between?)"
    if isinstance(e, httpx.ReadTimeout):
        return f"no data from the server for {timeout_s:g} s (timed out: server too slow or stuck)"
    if isinstance(e, httpx.TimeoutException):
        return f"{url} timed out after {timeout_s:g} s ({type(e).__name__})"
    if isinstance(e, httpx.ConnectError):
        os_err = _oserror(e)
        if isinstance(os_err, ConnectionRefusedError):
            return f"could not connect to {url} (connection refused: is the server running?)"
        if isinstance(os_err, socket.gaierror):
            return f"could not connect to {url} (host not found: {os_err.strerror or os_err})"
        if isinstance(os_err, ssl.SSLError):
            return f"could not connect to {url} (TLS failed: {os_err.reason or os_err}; is it http://, not https://?)"
        if os_err is not None and os_err.errno in (errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"could not connect to {url} (bad address or port: {os_err.strerror})"
        return f"could not connect to {url} ({os_err or e})"
    if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
        return f"the server closed the connection mid-answer ({type(e).__name__})"
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
    base = check_url(url)
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


def _positive_int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def model_limits(entry: dict) -> dict:
    """What a /v1/models entry says about the prompts a model takes: `vocab_size` (token-id prompts must lie in
    [0, vocab_size): labkit's server says `vocab_size`, llama.cpp's `meta.n_vocab`) and `max_model_len` (prompt
    plus answer, in tokens: labkit's and vLLM's); None for what the server does not say."""
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    return {"vocab_size": _positive_int(entry.get("vocab_size")) or _positive_int(meta.get("n_vocab")),
            "max_model_len": _positive_int(entry.get("max_model_len"))}


def probe(url: str, model: str | None = None, timeout_s: float = 10.0, prompt=None) -> dict:
    """Check the server before a run: GET /v1/models (reachable, which models, what they take), then one 2-token
    completion with `ignore_eos` / `min_tokens`; a server that refuses those fields is probed again without them.
    Returns {"url", "models", "model", "extra", "note", "vocab_size", "max_model_len"} (the last two None where
    the server does not say); raises ServerUnreachable with the reason when nobody answers as an
    OpenAI-compatible server would. `prompt` is what the probe sends (default: token ids [1, 2, 3] to a server that
    states its vocabulary, else the text "Hello")."""
    base = check_url(url)
    try:
        with httpx.Client(timeout=timeout_s) as client:
            resp = client.get(f"{base}/v1/models")
            if resp.status_code != 200:
                raise ServerUnreachable(f"{base}/v1/models answered {_error_text(resp.status_code, resp.content)}: "
                                        "is this an OpenAI-compatible server?")
            try:
                entries = {m["id"]: m for m in resp.json()["data"]}
            except (ValueError, KeyError, TypeError):
                raise ServerUnreachable(f"{base}/v1/models did not answer with an OpenAI model list: "
                                        f"{resp.text[:200]!r}") from None
            models = list(entries)
            if model is None:
                if not models:
                    raise ServerUnreachable(f"{base} serves no model")
                model = models[0]
            elif models and model not in models:
                raise ServerUnreachable(f"{base} does not serve {model!r}; it serves {models}")
            limits = model_limits(entries.get(model) or {})
            if prompt is None:
                prompt = [1, 2, 3] if (limits["vocab_size"] or 0) > 3 else "Hello"
            note, extra = "", dict(EXTRA)
            body = {"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0.0}
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
    return {"url": base, "models": models, "model": model, "extra": extra, "note": note, **limits}


def token_prompts(info: dict, text: bool = False, vocab_size: int | None = None) -> tuple[int | None, str]:
    """How to write a trace's prompts for the server `probe` described: (the vocabulary to draw token ids from, or
    None for text, and a note for a person). Text when asked; else `vocab_size` when given (ValueError when it
    exceeds what the server says it takes); else the server's own vocabulary; else text, since random ids from
    a vocabulary the server did not state would be refused or mean nothing."""
    server = info.get("vocab_size")
    if text:
        return None, ""
    if vocab_size is not None:
        if server is not None and vocab_size > server:
            raise ValueError(f"--vocab-size {vocab_size} exceeds the vocabulary of {info['model']!r} ({server} "
                             f"tokens): its prompts take ids in [0, {server})")
        return vocab_size, ""
    if server is not None:
        return server, ""
    return None, ("the server does not say its vocabulary size, so prompts go as text (give --vocab-size N to "
                  "send token ids in [3, N))")


def check_fits(info: dict, prompt_len: int | tuple[int, int], output_len: int | tuple[int, int]) -> None:
    """ValueError, before any request, when the longest prompt plus the longest answer exceed the context the
    server states (`max_model_len`): every such request would be refused."""
    def longest(n):
        return n if isinstance(n, int) else max(n)

    p, o, limit = longest(prompt_len), longest(output_len), info.get("max_model_len")
    if limit is not None and p + o > limit:
        raise ValueError(f"prompts of up to {p} tokens plus answers of up to {o} need {p + o} tokens of context, but "
                         f"{info['model']!r} takes at most {limit} (max_model_len)")
