"""Issue #32, the server side: malformed and hostile requests against `python -m labkit serve` in its own process,
over real loopback HTTP. Each one must get a JSON error in OpenAI's shape with a 4xx status and the field named
(never a 500, a reset connection or a traceback in the server's log, which holds one line per refused request),
and the server must then still answer a good request token-exactly.
"""

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from test_http import TIMEOUT, reference_tokens, same_or_near_tie

from labkit.core import models
from labkit.serve.api import MAX_BODY_BYTES, launch

BIG = 2 * MAX_BODY_BYTES  # a body twice the server's default limit (2 MiB)


@pytest.fixture(scope="module")
def server():
    proc = launch(["--model", models.EMBEDDED, "--device", "cpu", "--kv-cache-gib", "0.05", "--max-batch", "4"],
                  timeout_s=240)
    yield proc
    proc.stop()


def _read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"the server closed the connection without an answer; got {data[:200]!r}"
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (h.split(":", 1) for h in lines[1:]))
    while len(body) < int(headers["content-length"]):
        more = sock.recv(65536)
        assert more, "the server closed the connection in the middle of its answer"
        body += more
    return int(lines[0].split()[1]), headers, body


def _raw(url: str, head: bytes, parts) -> tuple[int, dict, dict, socket.socket]:
    """Send `head` and then every body part on one socket (a reset while sending fails the test: the client must
    be able to send its whole request), read the answer. Returns status, headers, JSON body and the socket."""
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    sock.sendall(head)
    for part in parts:
        sock.sendall(part)
    status, headers, body = _read_response(sock)
    return status, headers, json.loads(body), sock


def _check(status: int, body: dict, want_status: int, param) -> str:
    assert status == want_status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    return err["message"]


def _post(url: str, path: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=content, headers={"content-type": "application/json"}, timeout=TIMEOUT)


SURROGATE = [  # raw JSON bodies (a lone surrogate is valid JSON, but no text), path, param
    (b'{"prompt": "\\ud800", "max_tokens": 2}', "/v1/completions", "prompt"),
    (b'{"prompt": "ok \\udfff", "max_tokens": 2, "stream": true}', "/v1/completions", "prompt"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "/v1/chat/completions", "messages[0].content"),
    (b'{"prompt": "x", "\\ud800": 1}', "/v1/completions", "\\ud800"),
    (b'{"prompt": "x", "model": "\\udbff"}', "/v1/completions", "model"),
]
MALFORMED = [  # raw bodies that must be refused with 400 naming the field (None: the body as a whole)
    (b'{"prompt": "\xff\xfe"}', None),  # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, None),  # nested deeper than any parser's recursion
    (b'{"prompt": ' + b"[" * 500 + b"1" + b"]" * 500 + b"}", "prompt"),  # deep, but valid JSON
    (b'{"prompt": [1, 100000000000000000000000000000]}', "prompt"),
    (b'{"prompt": "x", "max_tokens": 1e400}', "max_tokens"),  # json reads it as infinity
    (b'{"prompt": "x", "temperature": -Infinity}', "temperature"),
]


def test_hostile_input_gets_a_json_4xx_and_the_server_keeps_serving(server, tmp_path):
    url = server.url
    refused = 0
    for body, path, param in SURROGATE:
        r = _post(url, path, body)
        assert "surrogate" in _check(r.status_code, r.json(), 400, param)
        refused += 1
    for body, param in MALFORMED:
        r = _post(url, "/v1/completions", body)
        _check(r.status_code, r.json(), 400, param)
        refused += 1
    r = _post(url, "/v1/completions", b'{"prompt": "pair \\ud83d\\ude00 ok", "max_tokens": 2}')  # a surrogate pair
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2

    # a body over the limit, declared: answered 413 after it was read, on a connection that stays usable
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {BIG}\r\n\r\n").encode()
    status, headers, body, sock = _raw(url, head, (b" " * 65536 for _ in range(BIG // 65536)))
    assert "limit of 1048576 bytes" in _check(status, body, 413, None) and headers.get("connection") != "close"
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock)[0] == 200
    sock.close()
    # the same, chunked (no Content-Length): counted as it arrives
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = [b"%x\r\n%s\r\n" % (65536, b" " * 65536) for _ in range(BIG // 65536)] + [b"0\r\n\r\n"]
    status, headers, body, sock = _raw(url, head, chunks)
    _check(status, body, 413, None)
    sock.close()
    # declared with `Expect: 100-continue` (curl's way for big bodies): refused before the body is sent
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    status, headers, body, sock = _raw(url, head, [])
    _check(status, body, 413, None)
    assert headers.get("connection") == "close"
    sock.close()
    # and through a client library, both ways
    r = httpx.post(f"{url}/v1/completions", content=b" " * BIG, timeout=TIMEOUT)
    _check(r.status_code, r.json(), 413, None)
    r = httpx.post(f"{url}/v1/completions", content=iter([b" " * 65536] * (BIG // 65536)), timeout=TIMEOUT)
    _check(r.status_code, r.json(), 413, None)
    refused += 5

    # still serving, token-exactly: the same tokens as the model run in this process
    tok = models.load_tokenizer(models.EMBEDDED)
    embedded = models.load(models.EMBEDDED)
    prompt = "def parse_args(argv):\n"
    out = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                                    "ignore_eos": True}, timeout=TIMEOUT).json()
    ids = tok(prompt)["input_ids"]
    same_or_near_tie(embedded, ids, out["choices"][0]["token_ids"], reference_tokens(embedded, ids, 12))

    assert server.stop() == 0
    log = list(server.output)
    assert not [line for line in log if "Traceback" in line or "Exception in ASGI" in line], "\n".join(log)
    lines = [line for line in log if " refused POST " in line]
    assert len(lines) == refused, "\n".join(log)  # one line per refused request
    assert all(" 400 " in line or " 413 " in line for line in lines)
