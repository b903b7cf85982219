"""labkit's OpenAI-compatible server over real HTTP on 127.0.0.1: started and stopped by the tests.

Reliability (200 concurrent streams, some leaving mid-stream: nothing lost, every KV block freed, the server
still answers), bad input (the right status and an OpenAI-style body naming the field, never a 500 or a hang),
and the engine's property through the server: greedy tokens equal `model.generate`'s.
"""

import asyncio
import copy
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import torch

from labkit.core import models
from labkit.serve.api import create_app, launch, parse_metrics, start_in_thread
from labkit.serve.engine import EngineConfig, LLMEngine

TIMEOUT = httpx.Timeout(20.0)  # every answer must come well within this: a hang fails the test


@pytest.fixture(scope="module")
def tiny_server(tiny_llama):
    engine = LLMEngine(tiny_llama, EngineConfig(max_num_seqs=32, block_size=16, num_blocks=96))
    server = start_in_thread(create_app(engine, "tiny", None, max_body_bytes=16384))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedded():
    return models.load(models.EMBEDDED)


@pytest.fixture(scope="module")
def text_server(embedded):
    tok = copy.deepcopy(models.load_tokenizer(models.EMBEDDED))
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    engine = LLMEngine(embedded, EngineConfig(max_num_seqs=8, num_blocks=256))
    server = start_in_thread(create_app(engine, models.EMBEDDED, tok))
    yield server, tok
    server.stop()


def reference_tokens(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         min_new_tokens=n)
    return out[0, len(prompt):].tolist()


def same_or_near_tie(model, prompt, got, ref) -> None:
    """Token-exact, unless fp32 rounding decides a near-tie (top-2 logit gap below 1e-4) at the first difference,
    as the engine's own tests allow."""
    if got == ref:
        return
    i = next(k for k, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b)
    with torch.no_grad():
        top2 = model(input_ids=torch.tensor([prompt + ref[:i]])).logits[0, -1].topk(2).values
    assert float(top2[0] - top2[1]) < 1e-4, f"token {i} differs: {got} vs {ref}"


def _metrics(url: str) -> dict:
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=TIMEOUT).text)


def _wait_idle(url: str, timeout_s: float = 20.0) -> dict:
    """Poll /metrics until nothing runs or waits and no KV block is held (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = _metrics(url)
        idle = (m["labkit:num_requests_running"], m["labkit:num_requests_waiting"], m["labkit:kv_cache_blocks_used"])
        if idle == (0, 0, 0) or time.monotonic() > deadline:
            assert idle == (0, 0, 0), f"still busy after {timeout_s} s: running, waiting, blocks used = {idle}"
            return m


def _ended(m: dict, reason: str) -> float:
    return m[f"labkit:request_success_total{{{reason}}}"]


def _sse(lines: list[str]) -> tuple[list[dict], bool]:
    chunks = [json.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]
    return chunks, "data: [DONE]" in lines


# ---------------------------------------------------------------- endpoints

def test_models_health_and_metrics(tiny_server):
    url = tiny_server.url
    assert url.startswith("http://127.0.0.1:")
    models_ = httpx.get(f"{url}/v1/models", timeout=TIMEOUT).json()
    assert [m["id"] for m in models_["data"]] == ["tiny"] and models_["data"][0]["max_model_len"] == 256
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_blocks_used", "kv_cache_blocks_total",
                 "generation_tokens_total", "generation_tokens_per_second", "request_success_total"):
        assert f"# TYPE labkit:{name} " in text
    assert parse_metrics(text)["labkit:kv_cache_blocks_total"] == 96


def test_greedy_tokens_over_http_equal_generate(tiny_server, tiny_llama):
    """Several requests at once (so the engine batches them), whole and streamed: the tokens are generate's."""
    prompts = [[3 + (7 * i + j) % 250 for j in range(n)] for i, n in enumerate([5, 17, 40, 9, 64, 23])]
    n_out = [12, 3, 20, 1, 8, 16]

    async def ask(client, p, n, stream):
        body = {"model": "tiny", "prompt": p, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                "stream": stream, "stream_options": {"include_usage": True} if stream else None}
        if not stream:
            r = await client.post(f"{tiny_server.url}/v1/completions", json=body)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["usage"] == {"prompt_tokens": len(p), "completion_tokens": n, "total_tokens": len(p) + n}
            assert out["choices"][0]["finish_reason"] == "length"
            return out["choices"][0]["token_ids"]
        async with client.stream("POST", f"{tiny_server.url}/v1/completions", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            chunks, done = _sse([x async for x in r.aiter_lines()])
        assert done
        tokens = [c for c in chunks if c["choices"]]
        assert all(len(c["choices"][0]["token_ids"]) == 1 for c in tokens)  # one chunk per token
        assert tokens[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == n and not chunks[-1]["choices"]
        return [c["choices"][0]["token_ids"][0] for c in tokens]

    async def main():
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(*[ask(client, p, n, s) for s in (False, True)
                                          for p, n in zip(prompts, n_out, strict=True)])

    got = asyncio.run(main())
    for k, out in enumerate(got):
        p, n = prompts[k % len(prompts)], n_out[k % len(prompts)]
        assert len(out) == n
        same_or_near_tie(tiny_llama, p, out, reference_tokens(tiny_llama, p, n))


# ---------------------------------------------------------------- reliability

def test_200_concurrent_streams_some_leaving_none_lost(tiny_server):
    """200 streaming clients at once: 10 ask for more than the context (refused 400), 40 leave after two tokens,
    150 read to the end. Every request ends finished, rejected or cancelled; all KV blocks are free afterwards
    (96 blocks cannot hold 32 sequences of 232 tokens, so preemption is exercised too); the server still answers."""
    url = tiny_server.url
    before = _wait_idle(url)

    async def one(client, i):
        leave = i % 5 == 1
        n = 200 if leave else 24
        prompt = [5] * 300 if i % 20 == 0 else [3 + (i * 13 + j) % 250 for j in range(8 + i % 24)]
        body = {"model": "tiny", "prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                err = json.loads(await r.aread())["error"]
                return ("refused", r.status_code, err["param"])
            tokens, usage, finish = 0, None, None
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    return ("done", tokens, usage, finish)
                if line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if chunk["choices"]:
                        tokens += len(chunk["choices"][0]["token_ids"])
                        finish = chunk["choices"][0]["finish_reason"] or finish
                    usage = chunk.get("usage") or usage
                    if leave and tokens >= 2:
                        return ("left", tokens)
            return ("cut", tokens)

    async def main():
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as client:
            return await asyncio.gather(*[one(client, i) for i in range(200)])

    out = asyncio.run(main())
    kinds = [o[0] for o in out]
    assert kinds.count("refused") == 10 and all(o[1:] == (400, "prompt") for o in out if o[0] == "refused")
    assert kinds.count("left") == 40 and kinds.count("done") == 150, kinds
    for o in out:
        if o[0] == "done":
            assert o[1] == 24 and o[2]["completion_tokens"] == 24 and o[3] == "length"
    after = _wait_idle(url)
    delta = {r: _ended(after, r) - _ended(before, r) for r in ("length", "stop", "cancelled", "rejected")}
    assert delta["rejected"] == 10
    assert delta["length"] + delta["cancelled"] == 190  # none lost
    assert delta["cancelled"] >= 20, delta  # leaving mid-stream cancels (a few may finish before they are seen)
    r = httpx.post(f"{url}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0,
                                                   "ignore_eos": True}, timeout=TIMEOUT)
    assert r.status_code == 200 and len(r.json()["choices"][0]["token_ids"]) == 4


def test_a_client_that_leaves_frees_its_blocks_at_once(tiny_server):
    url = tiny_server.url
    before = _wait_idle(url)
    body = {"prompt": [7] * 8, "max_tokens": 240, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=TIMEOUT) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    after = _wait_idle(url, timeout_s=5)
    assert _ended(after, "cancelled") - _ended(before, "cancelled") == 1
    assert after["labkit:generation_tokens_total"] - before["labkit:generation_tokens_total"] < 240


def test_a_non_streaming_client_that_leaves_is_cancelled(tiny_server):
    url = tiny_server.url
    before = _wait_idle(url)
    body = {"prompt": [9] * 8, "max_tokens": 240, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(5.0, read=0.05))
    after = _wait_idle(url, timeout_s=5)
    assert _ended(after, "cancelled") - _ended(before, "cancelled") == 1


# ---------------------------------------------------------------- bad input

OK = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 4}
BAD = [  # (body: a dict merged into OK, or raw bytes; status; param)
    (b"{", 400, None),
    (b'{"prompt": [1], "max_tokens": 2,}', 400, None),
    (b"[1, 2]", 400, None),
    (b"\xff\xfe\x00", 400, None),
    (b'{"prompt": [1], "temperature": NaN}', 400, "temperature"),
    (b'{"prompt": [1], "\\ud800": 1}', 400, "\\ud800"),  # a lone surrogate (valid JSON, not text) as a name
    (b'{"prompt": [1], "model": "tiny\\udc00"}', 400, "model"),  # ... as a value: refused, not 404 or 500
    ({"model": "llama-9000"}, 404, "model"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": -5}, 400, "max_tokens"),
    ({"max_tokens": 10**12}, 400, "max_tokens"),
    ({"max_tokens": 254}, 400, "max_tokens"),  # 3 + 254 > the 256-token context
    ({"max_tokens": 1.5}, 400, "max_tokens"),
    ({"max_tokens": "8"}, 400, "max_tokens"),
    ({"max_tokens": True}, 400, "max_tokens"),
    ({"prompt": [5] * 300}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": None}, 400, "prompt"),
    ({"prompt": [1, 999]}, 400, "prompt"),
    ({"prompt": [1, -1]}, 400, "prompt"),
    ({"prompt": [1, 2.5]}, 400, "prompt"),
    ({"prompt": [[1, 2], [3]]}, 400, "prompt"),
    ({"prompt": "no tokenizer here"}, 400, "prompt"),
    ({"prompt": {"ids": [1]}}, 400, "prompt"),
    ({"n": 2}, 400, "n"),
    ({"best_of": 3}, 400, "best_of"),
    ({"logprobs": 1}, 400, "logprobs"),
    ({"echo": True}, 400, "echo"),
    ({"stop": ["\n"]}, 400, "stop"),
    ({"top_p": 0.5}, 400, "top_p"),
    ({"seed": 1}, 400, "seed"),
    ({"suffix": "x"}, 400, "suffix"),
    ({"frobnicate": 1}, 400, "frobnicate"),
    ({"temperature": -1}, 400, "temperature"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"stream": "yes"}, 400, "stream"),
    ({"stream_options": {"include_usage": "yes"}}, 400, "stream_options"),
    ({"ignore_eos": 1}, 400, "ignore_eos"),
    ({"min_tokens": 2}, 400, "min_tokens"),  # between 0 and max_tokens: not implemented, said so
    ({"min_tokens": 9}, 400, "min_tokens"),
    ({"stop_token_ids": [1, "x"]}, 400, "stop_token_ids"),
]


def _check_error(r: httpx.Response, status: int, param) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    return err


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("body, status, param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_gets_a_clear_error_naming_the_field(tiny_server, body, status, param, stream):
    if isinstance(body, bytes):
        content = body
    else:
        content = json.dumps({**OK, **body, "stream": body.get("stream", stream)}).encode()
    r = httpx.post(f"{tiny_server.url}/v1/completions", content=content, timeout=TIMEOUT,
                   headers={"content-type": "application/json"})
    err = _check_error(r, status, param)
    if param == "frobnicate":
        assert "unknown parameter 'frobnicate'" in err["message"]
    if status == 404:
        assert err["code"] == "model_not_found"


def test_valid_edge_values_are_accepted(tiny_server):
    """min_tokens equal to max_tokens fixes the length (vLLM's benchmark sends it); OpenAI's batch form with one
    prompt; neutral values of unsupported parameters."""
    for extra in ({"min_tokens": 4}, {"prompt": [[1, 2, 3]]}, {"n": 1, "top_p": 1, "logprobs": None, "stop": None},
                  {"max_tokens": 253}):
        r = httpx.post(f"{tiny_server.url}/v1/completions", json={**OK, "temperature": 0, **extra}, timeout=TIMEOUT)
        assert r.status_code == 200, (extra, r.text)
    assert len(r.json()["choices"][0]["token_ids"]) <= 253


def test_body_over_the_limit_is_refused_before_parsing(tiny_server):
    big = json.dumps({**OK, "prompt": [1] * 10000}).encode()  # ~30 kB against a 16 kB limit
    r = httpx.post(f"{tiny_server.url}/v1/completions", content=big, timeout=TIMEOUT)
    _check_error(r, 413, None)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 1000

    r = httpx.post(f"{tiny_server.url}/v1/completions", content=chunks(), timeout=TIMEOUT)
    _check_error(r, 413, None)
    assert "16384 bytes" in r.json()["error"]["message"]


def test_unknown_route_method_and_chat_without_tokenizer(tiny_server):
    url = tiny_server.url
    _check_error(httpx.get(f"{url}/v2/nothing", timeout=TIMEOUT), 404, None)
    _check_error(httpx.get(f"{url}/v1/completions", timeout=TIMEOUT), 405, None)
    for messages, param in ([{"role": "user", "content": "hi"}], "messages"), (None, "messages"), \
            ([{"role": "robot", "content": "hi"}], "messages[0]"), ([{"role": "user", "content": 5}], "messages[0]"):
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": messages}, timeout=TIMEOUT)
        err = _check_error(r, 400, param)
        if messages and messages[0]["role"] == "user" and messages[0]["content"] == "hi":
            assert "no tokenizer" in err["message"]
    assert httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200  # still serving


# ---------------------------------------------------------------- text, chat (the embedded model)

def test_text_prompt_stream_and_whole_agree_with_generate(text_server, embedded):
    server, tok = text_server
    url = server.url
    prompt = "def read_config(path):\n"
    body = {"model": models.EMBEDDED, "prompt": prompt, "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    whole = httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT).json()
    ids = tok(prompt)["input_ids"]
    same_or_near_tie(embedded, ids, whole["choices"][0]["token_ids"], reference_tokens(embedded, ids, 20))
    assert whole["choices"][0]["text"] == tok.decode(whole["choices"][0]["token_ids"], skip_special_tokens=True)
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=TIMEOUT) as r:
        chunks, done = _sse(list(r.iter_lines()))
    assert done and "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]


def test_chat_uses_the_template(text_server, embedded):
    server, tok = text_server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "import os"}]
    body = {"model": models.EMBEDDED, "messages": messages, "max_completion_tokens": 12, "temperature": 0,
            "ignore_eos": True}
    out = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=TIMEOUT).json()
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    ids = tok("system: Be brief.\nuser: import os\nassistant:", add_special_tokens=False)["input_ids"]
    assert out["usage"]["prompt_tokens"] == len(ids)
    same_or_near_tie(embedded, ids, out["choices"][0]["token_ids"], reference_tokens(embedded, ids, 12))
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=TIMEOUT) as r:
        chunks, done = _sse(list(r.iter_lines()))
    assert done and chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == out["choices"][0]["message"]["content"]


# ---------------------------------------------------------------- the command line, in its own process

def test_cli_serve_then_bench_then_stop(tmp_path):
    """`python -m labkit serve` on a free port; `python -m labkit bench --url` records its run; after the server
    stops, bench says it is unreachable and records every request as failed."""
    server = launch(["--model", models.EMBEDDED, "--kv-cache-gib", "0.05", "--max-batch", "4"], timeout_s=240)
    env = {**os.environ, "LABKIT_REPORTS": str(tmp_path / "reports")}
    cmd = [sys.executable, "-m", "labkit", "bench", "--url", server.url, "--requests", "4", "--prompt-len", "16",
           "--output-len", "3,5", "--text", "--rate", "50"]
    try:
        assert server.url.startswith("http://127.0.0.1:")
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "import", "max_tokens": 3}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        ok = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "4 of 4 requests completed" in ok.stdout
    finally:
        code = server.stop()
    assert code is not None
    down = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert down.returncode == 1 and "connection refused" in down.stderr
    recs = sorted((tmp_path / "reports" / "results" / "bench_http").glob("*.json"))
    metrics = [json.loads(p.read_text())["metrics"] for p in recs]
    assert sorted((m["completed"], m["failed"]) for m in metrics) == [(0, 4), (4, 0)]


def test_an_engine_that_fails_ends_every_request_with_the_reason(tiny_llama):
    """A step that raises stops the engine: the requests in flight get the reason (503, or an error event in the
    stream), new ones are refused with it, /health says so; nothing hangs."""
    engine = LLMEngine(tiny_llama, EngineConfig(max_num_seqs=4, num_blocks=32))

    def broken(out):
        raise RuntimeError("out of memory (simulated)")

    engine.runner.run = broken
    with start_in_thread(create_app(engine, "tiny")) as server:
        body = {"prompt": [1, 2, 3], "max_tokens": 4}
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=TIMEOUT)
        assert r.status_code == 503 and "out of memory (simulated)" in r.json()["error"]["message"]
        r = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=TIMEOUT)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        health = httpx.get(f"{server.url}/health", timeout=TIMEOUT)
        assert health.status_code == 503 and "RuntimeError: out of memory" in health.json()["error"]["message"]
