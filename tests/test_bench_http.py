"""The HTTP benchmark client: the same metrics as in process against labkit's server, and a clear count of failed
requests against a server that is down, slow, failing or cutting answers off (small fake servers on 127.0.0.1)."""

import asyncio
import itertools
import json

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from labkit.__main__ import main
from labkit.serve import client as bench_http
from labkit.serve.api import bind, create_app, start_in_thread
from labkit.serve.baselines import run_engine
from labkit.serve.engine import EngineConfig, LLMEngine
from labkit.serve.workload import make_trace


def _config():
    return EngineConfig(max_num_seqs=8, block_size=16, num_blocks=128)


@pytest.fixture(scope="module")
def server(tiny_llama):
    s = start_in_thread(create_app(LLMEngine(tiny_llama, _config()), "tiny"))
    yield s
    s.stop()


def _trace(n=12, seed=1):
    return make_trace(n, prompt_len=(8, 24), output_len=(3, 12), arrival="poisson", rate=40.0, vocab_size=256,
                      seed=seed)


def test_replay_over_http_gives_the_in_process_metrics_and_tokens(server, tiny_llama):
    info = bench_http.probe(server.url)
    assert info["model"] == "tiny" and info["extra"] == bench_http.EXTRA and not info["note"]
    trace = _trace()
    replay = bench_http.run(server.url + "/v1/", "tiny", trace, extra=info["extra"])
    s = replay.summary(slo_ms={"ttft": 60_000})
    assert (s["sent"], s["completed"], s["failed"], s["output_len_mismatch"]) == (12, 12, 0, 0)
    assert s["total_output_tokens"] == sum(r.output_len for r in trace)
    assert s["total_input_tokens"] == sum(r.prompt_len for r in trace)
    assert s["goodput"] > 0 and s["ttft_median_ms"] > 0 and s["tpot_median_ms"] > 0
    for r, res in zip(trace, replay.results, strict=True):  # the trace's schedule is the start, as in process
        assert res.timing.output_tokens == r.output_len == res.reported_tokens
        assert res.timing.token_times[0] > res.timing.start
    _, in_process = run_engine(LLMEngine(tiny_llama, _config()), trace)
    assert replay.outputs == in_process  # greedy: the same tokens through the server
    assert "12 of 12 requests completed" in replay.describe()


def test_cli_bench_against_labkit_records_the_run(server, reports, capsys):
    """No --vocab-size: the client draws token ids from the vocabulary the server states (256 here; the old fixed
    32,000 made every request to a smaller model fail with HTTP 400)."""
    rc = main(["bench", "--url", server.url, "--requests", "5", "--prompt-len", "8", "--output-len", "2,4"])
    out = capsys.readouterr().out
    assert rc == 0 and "5 of 5 requests completed" in out and "tpot_median_ms" in out
    rec = json.loads(next((reports / "results" / "bench_http").glob("*.json")).read_text())
    assert rec["metrics"]["completed"] == 5 and rec["metrics"]["failed"] == 0
    assert rec["config"]["extra_fields"] == {"ignore_eos": True, "min_tokens": "output_len"}
    assert rec["config"]["prompts"] == "token ids in [3, 256)"


def test_probe_reads_what_labkit_serves(server, tiny_llama):
    info = bench_http.probe(server.url)
    assert info["vocab_size"] == tiny_llama.config.vocab_size
    assert info["max_model_len"] == tiny_llama.config.max_position_embeddings
    assert bench_http.token_prompts(info) == (tiny_llama.config.vocab_size, "")
    assert bench_http.token_prompts(info, vocab_size=100) == (100, "")
    assert bench_http.token_prompts(info, text=True) == (None, "")
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        bench_http.token_prompts(info, vocab_size=tiny_llama.config.vocab_size + 1)
    limit = info["max_model_len"]
    bench_http.check_fits(info, (1, limit - 1), 1)
    with pytest.raises(ValueError, match=f"takes at most {limit}"):
        bench_http.check_fits(info, limit, (1, 2))


def _closed_port_url() -> str:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def test_server_down_every_request_failed_and_said_so(reports, capsys):
    url = _closed_port_url()
    with pytest.raises(bench_http.ServerUnreachable, match="connection refused"):
        bench_http.probe(url)
    replay = bench_http.run(url, "m", _trace(4), timeout_s=2)
    s = replay.summary()
    assert (s["sent"], s["completed"], s["failed"]) == (4, 0, 4) and "ttft_median_ms" not in s
    assert list(s["errors"]) == [f"could not connect to {url} (connection refused: is the server running?)"]
    assert "4 FAILED" in replay.describe()
    assert main(["bench", "--url", url, "--requests", "3", "--vocab-size", "256", "--timeout", "2"]) == 1
    assert "connection refused" in capsys.readouterr().err
    rec = json.loads(next((reports / "results" / "bench_http").glob("*.json")).read_text())
    assert (rec["metrics"]["completed"], rec["metrics"]["failed"]) == (0, 3)


# ---------------------------------------------------------------- fake servers that misbehave

def _chunk(i: int) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "text": f"t{i}", "finish_reason": None}]}) + "\n\n"


def _fake(completions, models=None):
    async def list_models(request):
        return models(request) if models else JSONResponse({"object": "list", "data": [{"id": "fake"}]})

    return Starlette(routes=[Route("/v1/models", list_models), Route("/v1/completions", completions,
                                                                     methods=["POST"])])


def _tokens(n: int, done: bool = True, delay_s: float = 0.0, stall_after: int | None = None):
    async def body():
        for i in range(n):
            if stall_after is not None and i == stall_after:
                await asyncio.sleep(2.0)  # bounded: the client's timeout is far shorter
            yield _chunk(i)
            await asyncio.sleep(delay_s)
        if done:
            yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture
def fake():
    started = []

    def start(app):
        s = start_in_thread(app)
        started.append(s)
        return s.url

    yield start
    for s in started:
        s.stop()


def test_slow_server_times_out_and_is_counted(fake):
    async def completions(request):
        body = await request.json()
        return _tokens(body["max_tokens"], stall_after=0 if body["prompt"][0] % 2 else 1)

    url = fake(_fake(completions))
    replay = bench_http.run(url, "fake", _trace(6), timeout_s=0.3)
    s = replay.summary()
    assert (s["completed"], s["failed"]) == (0, 6)
    assert list(s["errors"]) == ["no data from the server for 0.3 s (timed out: server too slow or stuck)"]


def test_errors_are_counted_and_metrics_cover_the_rest(fake):
    counter = itertools.count()

    async def completions(request):
        body = await request.json()
        if next(counter) % 2:
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        return _tokens(body["max_tokens"], delay_s=0.001)

    url = fake(_fake(completions))
    trace = _trace(8)
    replay = bench_http.run(url, "fake", trace, extra=bench_http.EXTRA)
    s = replay.summary()
    assert (s["sent"], s["completed"], s["failed"]) == (8, 4, 4)
    assert s["errors"] == {"HTTP 500: boom": 4}
    ok = [r for r in replay.results if r.error is None]
    assert s["total_output_tokens"] == sum(r.timing.output_tokens for r in ok)
    assert "4 FAILED: HTTP 500: boom (4x)" in replay.describe()


def test_a_stream_cut_off_before_done_is_a_failure(fake):
    async def completions(request):
        return _tokens(2, done=False)

    replay = bench_http.run(fake(_fake(completions)), "fake", _trace(3))
    assert replay.summary()["failed"] == 3
    assert list(replay.errors) == ["the stream ended before data: [DONE] (answer cut off)"]


def test_error_event_inside_the_stream_and_garbage_chunks(fake):
    async def completions(request):
        body = await request.json()

        async def gen():
            yield _chunk(0)
            yield ('data: {"error": {"message": "engine died"}}\n\n' if body["prompt"][0] % 2 else "data: {oops\n\n")

        return StreamingResponse(gen(), media_type="text/event-stream")

    replay = bench_http.run(fake(_fake(completions)), "fake", _trace(6))
    assert replay.summary()["failed"] == 6
    assert all("engine died" in e or "not OpenAI-style JSON" in e for e in replay.errors)


def test_probe_drops_length_fields_a_server_refuses_and_mismatches_are_counted(fake):
    async def completions(request):
        body = await request.json()
        if "ignore_eos" in body or "min_tokens" in body:
            return JSONResponse({"error": {"message": "unknown field ignore_eos"}}, status_code=400)
        return _tokens(2)  # always 2 tokens, whatever was asked

    url = fake(_fake(completions))
    info = bench_http.probe(url)
    assert info["extra"] == {} and "ignore_eos" in info["note"] and info["model"] == "fake"
    trace = _trace(5)
    s = bench_http.run(url, info["model"], trace, extra=info["extra"]).summary()
    assert s["failed"] == 0 and s["output_len_mismatch"] == sum(r.output_len != 2 for r in trace) > 0


def test_probe_names_what_is_wrong(fake):
    async def completions(request):
        return _tokens(1)

    url = fake(_fake(completions, models=lambda r: JSONResponse({"detail": "no"}, status_code=404)))
    with pytest.raises(bench_http.ServerUnreachable, match="OpenAI-compatible"):
        bench_http.probe(url)
    url = fake(_fake(completions))
    with pytest.raises(bench_http.ServerUnreachable, match="does not serve 'other'"):
        bench_http.probe(url, "other")
    with pytest.raises(ValueError, match="http://"):
        bench_http.run("localhost:8000", "m", _trace(1))


# ---------------------------------------------------------------- the CLI: bad options and unreachable servers

def _cli(capsys, *args):
    try:
        rc = main(["bench", *args])
    except SystemExit as e:  # argparse's own errors (a value of the wrong type, a missing option)
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


BAD_OPTIONS = [  # (options, what the one line must name); the URL is never contacted: these fail first
    (["--url", "http://127.0.0.1:abc"], "its port must be a number from 1 to 65535"),
    (["--url", "http://[::1"], "an IPv6 address goes in closed brackets"),
    (["--url", "http://127.0.0.1 :8000"], "url must not contain spaces"),
    (["--url", "http://127.0.0.1:99999"], "its port must be a number from 1 to 65535"),
    (["--url", "http://127.0.0.1:0"], "its port must be a number from 1 to 65535"),
    (["--url", "127.0.0.1:8000"], "url must start with http:// or https://"),
    (["--url", "http://:8000"], "no host name"),
    (["--timeout", "0"], "--timeout must be a number > 0, got 0"),
    (["--timeout", "nan"], "--timeout must be a number > 0, got nan"),
    (["--max-concurrency", "0"], "--max-concurrency must be >= 1, got 0"),
    (["--requests", "0"], "--requests must be >= 1, got 0"),
    (["--requests", "-3"], "--requests must be >= 1, got -3"),
    (["--rate", "0"], "--rate must be a number > 0, got 0"),
    (["--rate", "-2"], "--rate must be a number > 0, got -2"),
    (["--burstiness", "0"], "--burstiness must be a number > 0"),
    (["--prompt-len", "0"], "--prompt-len must be N >= 1 or LO,HI with 1 <= LO <= HI, got 0"),
    (["--prompt-len=-5,10"], "--prompt-len must be N >= 1 or LO,HI with 1 <= LO <= HI, got -5,10"),
    (["--output-len", "8,4"], "--output-len must be N >= 1 or LO,HI with 1 <= LO <= HI, got 8,4"),
    (["--output-len", "-1"], "--output-len must be"),
    (["--vocab-size", "3"], "--vocab-size must be >= 4, got 3"),
    (["--slo-ttft-ms", "0"], "--slo-ttft-ms must be a number > 0"),
    (["--rate", "abc"], "argument --rate: invalid float value: 'abc'"),
    (["--prompt-len", "x"], "argument --prompt-len: expected N or LO,HI"),
]


@pytest.mark.parametrize(("options", "why"), BAD_OPTIONS, ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_cli_bench_refuses_a_bad_option_in_one_line_before_any_request(options, why, reports, capsys):
    args = options if options[0] == "--url" else ["--url", "http://127.0.0.1:8000", *options]
    rc, out, err = _cli(capsys, *args)
    assert rc == 2 and not out
    assert err.startswith("error: ") and err.count("\n") == 1 and why in err, err
    assert "Traceback" not in err
    assert not (reports / "results").exists()  # nothing was sent, so nothing is recorded


def test_cli_bench_without_url_says_so_in_one_line(capsys):
    rc, _, err = _cli(capsys, "--requests", "3")
    assert rc == 2 and err.count("\n") == 1 and "required: --url" in err


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers (a stuck server)."""
    sock = bind()
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("case", ["refused", "host not found", "timed out"])
def test_cli_bench_names_why_it_could_not_reach_the_server(case, silent_port, reports, capsys):
    url, why = {"refused": (_closed_port_url(), "connection refused: is the server running?"),
                "host not found": ("http://no-such-host.invalid:8000", "host not found"),
                "timed out": (f"http://127.0.0.1:{silent_port}", "for 0.5 s (timed out")}[case]
    rc, out, err = _cli(capsys, "--url", url, "--requests", "3", "--timeout", "0.5")
    assert rc == 1 and not out and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and why in err and "no request was sent" in err, err
    rec = json.loads(next((reports / "results" / "bench_http").glob("*.json")).read_text())
    assert (rec["metrics"]["completed"], rec["metrics"]["failed"]) == (0, 3)


def test_the_real_cli_prints_one_line_and_no_traceback():
    import subprocess
    import sys

    for url, why in (("http://127.0.0.1:abc", "its port must be a number"), ("http://[::1", "IPv6")):
        p = subprocess.run([sys.executable, "-m", "labkit", "bench", "--url", url], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1 and why in p.stderr, p.stderr


def test_a_server_that_states_no_vocabulary_gets_text_prompts(fake, reports, capsys):
    prompts = []

    async def completions(request):
        body = await request.json()
        prompts.append(body["prompt"])
        return _tokens(body["max_tokens"])

    url = fake(_fake(completions))
    rc, out, _ = _cli(capsys, "--url", url, "--requests", "3", "--prompt-len", "8", "--output-len", "2")
    assert rc == 0 and "3 of 3 requests completed" in out and "does not say its vocabulary size" in out
    assert len(prompts) == 1 + 3 and all(isinstance(p, str) and p for p in prompts)  # the probe, then the trace
    assert json.loads(next((reports / "results" / "bench_http").glob("*.json")).read_text())["config"]["prompts"] == \
        "text"
    prompts.clear()
    assert _cli(capsys, "--url", url, "--requests", "2", "--prompt-len", "8", "--output-len", "2",
                "--vocab-size", "50")[0] == 0
    assert all(isinstance(p, list) and all(3 <= t < 50 for t in p) for p in prompts[1:]), prompts


def test_model_limits_reads_labkit_vllm_and_llama_cpp_entries():
    assert bench_http.model_limits({"id": "m", "vocab_size": 8192, "max_model_len": 1024}) == \
        {"vocab_size": 8192, "max_model_len": 1024}
    assert bench_http.model_limits({"id": "m", "meta": {"n_vocab": 151936}}) == \
        {"vocab_size": 151936, "max_model_len": None}
    assert bench_http.model_limits({"id": "m", "vocab_size": True, "max_model_len": "4096"}) == \
        {"vocab_size": None, "max_model_len": None}
