"""labkit's engine behind an OpenAI-compatible HTTP API (what vLLM, llama.cpp's server, Ollama and TGI speak).

    app = create_app(engine, "stdlib-llama-16m", tokenizer)      # an ASGI app over one LLMEngine
    server = start_in_thread(app)                                 # uvicorn on 127.0.0.1, a free port
    ...  httpx.post(f"{server.url}/v1/completions", json={...})
    server.stop()                                                 # graceful: see launcher

`python -m labkit serve` runs the same app in the foreground (`launch` starts it as a child process). Endpoints:
POST /v1/completions, POST /v1/chat/completions (stream: true gives server-sent events, one chunk per token, then
`data: [DONE]`), GET /v1/models, GET /health, GET /metrics (Prometheus text, names as vLLM's with `labkit:`).

Split by job, as vLLM's entrypoints/openai is: `protocol` (request checking, OpenAI's error shape, detokenizing),
`loop` (the one thread that touches the engine), `answer` (the JSON or the event stream of one answer), `app`
(the routes behind a guard: body limit, admission, graceful drain), `metrics` (Prometheus text) and `launcher`
(sockets, uvicorn, the server process, stopping). Bad input is answered 4xx with an OpenAI-style error naming the
field, never a 500; a body over the limit gets 413 (the rest of it read first, so the client sees the answer and
not a reset); a stop drains: new requests get 503, running ones finish within a grace period or end with the
error event.
"""

from labkit.serve.api.app import MAX_BODY_BYTES, ServedApp, create_app
from labkit.serve.api.launcher import (
    SHUTDOWN_GRACE_S,
    BackgroundServer,
    ServerProcess,
    bind,
    engine_config,
    launch,
    serve,
    start_in_thread,
)
from labkit.serve.api.loop import EngineLoop
from labkit.serve.api.metrics import parse_metrics, prometheus_text
from labkit.serve.api.protocol import ApiError, Detokenizer, parse_request

__all__ = ["MAX_BODY_BYTES", "SHUTDOWN_GRACE_S", "ApiError", "BackgroundServer", "Detokenizer", "EngineLoop",
    "ServedApp", "ServerProcess", "bind", "create_app", "engine_config", "launch", "parse_metrics",
    "parse_request", "prometheus_text", "serve", "start_in_thread"]
