"""Issue #33 item 2: a graceful shutdown. Asked to stop (SIGTERM, Ctrl+C, `BackgroundServer.stop()`), the server
refuses new requests with 503, lets the requests in flight finish within its grace period and ends the rest with
the error event (streams: `data: {"error": ...}` then `data: [DONE]`; whole answers: a JSON error), one log line
per request it cut, no traceback; the process exits 0.
"""

import json
import logging
import signal
import threading
import time

import httpx
from test_http import TIMEOUT

from labkit.core import models
from labkit.serve.api import create_app, launch, parse_metrics, start_in_thread
from labkit.serve.config import EngineConfig
from labkit.serve.engine import LLMEngine


class Client(threading.Thread):
    """One request in a thread; `result` ends as ("complete", tokens, finish_reason), ("error", message) (the error
    event before [DONE], or a JSON error) or ("broken", what): a cut body, a reset, anything else."""

    def __init__(self, url: str, prompt, max_tokens: int, stream: bool = True):
        super().__init__(daemon=True)
        self.url, self.stream = url, stream
        self.body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                     "stream": stream}
        self.tokens = 0
        self.result: tuple | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self._stream() if self.stream else self._whole()
        except Exception as e:  # noqa: BLE001 - what the client saw is the result
            self.result = ("broken", repr(e))

    def _whole(self) -> tuple:
        r = httpx.post(f"{self.url}/v1/completions", json=self.body, timeout=httpx.Timeout(120.0))
        out = r.json()
        if r.status_code == 200:
            choice = out["choices"][0]
            return "complete", len(choice["token_ids"]), choice["finish_reason"]
        return ("error", out["error"]["message"]) if r.status_code == 503 else ("broken", r.status_code, out)

    def _stream(self) -> tuple:
        finish, error = None, None
        with httpx.stream("POST", f"{self.url}/v1/completions", json=self.body, timeout=httpx.Timeout(120.0)) as r:
            if r.status_code != 200:
                return "broken", r.status_code, r.read()
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    if error is not None:
                        return "error", error
                    return ("complete", self.tokens, finish) if finish else ("broken", "[DONE] without an end")
                if line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error = chunk["error"]["message"]
                        continue
                    self.tokens += len(chunk["choices"][0]["token_ids"])
                    finish = chunk["choices"][0]["finish_reason"] or finish
        return "broken", f"the stream ended without [DONE] after {self.tokens} tokens"


def _wait(condition, timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _held(url: str) -> int:
    """Requests the server has taken in (running or waiting): a request it has not yet read when SIGTERM lands
    gets 503, which is the late request's part of the test, not the in-flight ones'."""
    m = parse_metrics(httpx.get(f"{url}/metrics", timeout=TIMEOUT).text)
    return int(m["labkit:num_requests_running"] + m["labkit:num_requests_waiting"])


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_stop_lets_short_requests_finish_and_ends_the_rest_with_the_error_event(tiny_llama):
    """In process, with a slowed engine (each step at least 20 ms), so what finishes within the grace is known:
    a 10-token stream in flight finishes; 240-token streams and a 240-token whole request are cut, each with
    its error; a request arriving during the drain gets 503; every KV block is free afterwards."""
    engine = LLMEngine(tiny_llama, EngineConfig(max_num_seqs=8, num_blocks=96))
    step = engine.step

    def slow_step():
        time.sleep(0.02)
        return step()

    engine.step = slow_step
    app = create_app(engine, "tiny")
    server = start_in_thread(app, shutdown_grace_s=2.0)
    lines = Lines()
    logging.getLogger("labkit.serve.api").addHandler(lines)
    try:
        long = [Client(server.url, [3 + i] * 8, 240) for i in range(2)] + [Client(server.url, [9] * 8, 240, False)]
        _wait(lambda: parse_metrics(httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text)
              ["labkit:num_requests_running"] == 3, what="three requests running")
        short = Client(server.url, [5] * 8, 10)
        _wait(lambda: short.tokens > 0, what="the short stream's first token")
        stopping = threading.Thread(target=server.stop, daemon=True)
        stopping.start()
        _wait(lambda: app.draining, what="the drain")
        late = httpx.post(f"{server.url}/v1/completions", json={"prompt": [1, 2], "max_tokens": 2}, timeout=TIMEOUT)
        health = httpx.get(f"{server.url}/health", timeout=TIMEOUT)
        stopping.join(60)
        assert not stopping.is_alive() and not server.thread.is_alive()
        for c in [*long, short]:
            c.join(30)
    finally:
        logging.getLogger("labkit.serve.api").removeHandler(lines)
    assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
    assert late.json()["error"]["type"] == "server_error" and health.status_code == 503
    assert short.result == ("complete", 10, "length")
    assert [c.result for c in long] == [("error", "the server is shutting down")] * 3
    assert all(0 < c.tokens < 240 for c in long[:2])  # cut in the middle, not before their first token
    bm = engine.scheduler.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    messages = [r.getMessage() for r in lines.records]
    assert sum(" ended after " in m for m in messages) == 3, messages  # one line per cut request
    assert sum("refused POST /v1/completions" in m and ": 503 " in m for m in messages) == 1, messages
    assert not [r for r in lines.records if r.exc_info], messages


def test_sigterm_drains_the_server_process_and_it_exits_0():
    """`python -m labkit serve` in its own process, streams and a whole request in flight, SIGTERM: each client
    gets its whole answer or the error event, a new request gets 503, the process exits 0 with one log line per
    cut request and no traceback."""
    server = launch(["--model", models.EMBEDDED, "--device", "cpu", "--kv-cache-gib", "0.05", "--max-batch", "2",
                     "--shutdown-grace-s", "3"], timeout_s=240)
    try:
        clients = [Client(server.url, [10 + i] * 8, 1000) for i in range(4)]  # two run, two wait for a slot
        clients.append(Client(server.url, [20] * 8, 1000, stream=False))
        _wait(lambda: sum(c.tokens > 0 for c in clients) >= 2, timeout_s=120, what="two streams' first tokens")
        _wait(lambda: _held(server.url) == len(clients), timeout_s=60, what="the server holding all five requests")
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        late = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=TIMEOUT)
        code = server.process.wait(60)
        took = time.monotonic() - sent
        for c in clients:
            c.join(30)
    finally:
        server.stop()
    log = list(server.output)
    assert code == 0, "\n".join(log)
    assert late.status_code == 503 and late.json()["error"]["type"] == "server_error"
    results = [c.result for c in clients]
    assert all(r is not None and r[0] in ("complete", "error") for r in results), results
    assert all(r == ("complete", 1000, "length") for r in results if r[0] == "complete")
    cut = [r for r in results if r[0] == "error"]
    assert cut and all(r[1] == "the server is shutting down" for r in cut)  # 1000 tokens take longer than 3 s
    assert not [line for line in log if "Traceback" in line or "Exception in ASGI" in line], "\n".join(log)
    assert sum(" ended after " in line for line in log) == len(cut), "\n".join(log)
    assert took < 3 + 15, f"{took:.1f} s from SIGTERM to exit"
