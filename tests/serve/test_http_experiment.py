"""Notebook 09's experiment: the side-by-side replay (against a server in this process, so it is cheap), the table
and sentences built from the numbers, and the learner's-server row that says why it was skipped."""

import os
from types import SimpleNamespace

import pytest

from labkit.core import models
from labkit.core.bench import Rounds
from labkit.core.roofline import Card, Floor
from labkit.lessons import serving as hx
from labkit.serve import client as bench_http
from labkit.serve.api import bind, create_app, engine_config, start_in_thread
from labkit.serve.engine import LLMEngine
from labkit.serve.workload import make_trace


def test_side_by_side_against_a_server_gives_every_row_and_the_same_tokens(tiny_llama):
    server = start_in_thread(create_app(LLMEngine(tiny_llama, engine_config(8, 0.01)), "tiny"))
    try:
        trace = make_trace(6, prompt_len=(8, 20), output_len=(3, 8), arrival="poisson", rate=50.0, vocab_size=256)
        proc = SimpleNamespace(url=server.url, process=SimpleNamespace(pid=os.getpid()))  # the server runs here
        side = hx.side_by_side(LLMEngine(tiny_llama, engine_config(8, 0.01)), proc, "tiny", trace, rounds=2,
                               extra=bench_http.EXTRA, progress=False)
    finally:
        server.stop()
    assert side.same_tokens == 1.0 and side.output_tokens == sum(r.output_len for r in trace)
    rows = {r["metric"]: r for r in side.table()}
    assert set(rows) == {label for _, label, _, _ in hx.ROWS}
    for metric, label, words, _ in hx.ROWS:
        assert rows[label][hx.HTTP] is not None and rows[label][hx.HTTP] > 0, label
        assert (rows[label][hx.IN] is None) == (metric == "client_cpu_cores")
        assert ("over HTTP it is" in rows[label]) == bool(words)
    assert rows["output tokens per engine step"][hx.IN] >= 1


def _rounds(tpot_in, tpot_http, engine_in=2.0, engine_http=2.0, cores_in=1.9, cores_http=1.2, client=0.2):
    def one(tpot, eng, cores, extra):
        return {"tpot_median_ms": tpot, "itl_median_ms": tpot, "ttft_median_ms": [30.0] * 3,
                "e2e_median_ms": [300.0] * 3, "output_throughput": [1000 / t for t in tpot],
                "engine_ms_per_token": [eng] * 3, "tokens_per_step": [4.0] * 3, "cpu_cores": [cores] * 3, **extra}

    values = {hx.IN: one(tpot_in, engine_in, cores_in, {}),
              hx.HTTP: one(tpot_http, engine_http, cores_http, {"client_cpu_cores": [client] * 3,
                                                                "client_cpu_ms_per_token": [0.5] * 3})}
    return hx.SideBySide(Rounds([hx.IN, hx.HTTP], {}, values), 1.0, 100)


def test_meaning_follows_the_numbers():
    slower = hx.meaning(_rounds([10.0] * 3, [15.0] * 3, engine_http=2.6), cores=2)
    assert "+5.00 ms more per output token" in slower[0] and "1.50x slower" in slower[0] and "+50%" in slower[0]
    assert "engine itself running slower" in slower[1] and "waiting rather than computing" in slower[2]
    assert "per FLOP" in slower[-1]
    same = hx.meaning(_rounds([10.0, 10.1, 9.9], [10.0, 9.9, 10.1], cores_http=1.8), cores=2)
    assert "inconclusive" in same[0] and same[1].endswith("the engine ran no slower than in process.")
    assert "waiting" not in same[2] and not any("per FLOP" in s for s in same)
    # rounds that vary: the sentence's difference, ratio and share all come round by round (the medians of each side
    # apart, 10 and 30 ms, would read 3x and +200% beside a per-round 2x)
    varied = hx.meaning(_rounds([10.0, 20.0, 10.0], [15.0, 40.0, 30.0], engine_http=2.6), cores=2)
    assert "+20.00 ms more per output token" in varied[0] and "2.00x slower, +100% of the in-process" in varied[0]
    assert "+200%" not in varied[0] and "medians of TPOT apart: 10.00 ms in process, 30.00 ms over HTTP" in varied[0]
    outside = hx.meaning(_rounds([10.0] * 3, [15.0] * 3, engine_http=2.0), cores=2)
    assert "spent outside its steps" in outside[1] and "waiting" not in outside[2]


def test_model_spec_of_the_embedded_and_of_a_shape_model():
    spec = hx.model_spec(models.load(models.EMBEDDED))
    assert (spec.hidden_size, spec.num_hidden_layers, spec.num_key_value_heads, spec.vocab_size) == (384, 6, 2, 8192)
    assert spec.head_dim == 64
    shape = SimpleNamespace(labkit_shape=models.shape("llama-2-7b"))  # what models.build attaches
    assert hx.model_spec(shape) is shape.labkit_shape


def test_server_args_build_the_same_engine_as_engine_config(monkeypatch):
    """`python -m labkit serve` with server_args(...) runs the engine engine_config(...) builds in process."""
    from labkit.__main__ import main
    from labkit.serve import api as http

    got = {}
    monkeypatch.setattr(http, "serve", lambda app, host, port, **kw: got.update(app=app, host=host, port=port, **kw))
    assert main(["serve", *hx.server_args(models.EMBEDDED, None, "fp32", "cpu", 3, 0.02, 0), "--port", "0"]) == 0
    served = got["app"].engine_loop.engine
    ref = LLMEngine(models.load(models.EMBEDDED), engine_config(3, 0.02, seed=0))
    assert served.scheduler.config == ref.scheduler.config and served.config == ref.config
    assert got["host"] == "127.0.0.1"


def test_your_server_says_why_it_was_skipped():
    trace = make_trace(2, prompt_len=4, output_len=2, vocab_size=256)
    assert hx.your_server("", "", trace)["status"].startswith("skipped: url is empty")
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    row = hx.your_server(f"http://127.0.0.1:{port}", "", trace, timeout_s=2)
    assert row["status"].startswith("skipped: could not connect") and "connection refused" in row["status"]
    assert hx.your_server("127.0.0.1:8000", "", trace)["status"].startswith("skipped: url must start with http")


def _settings(preset="ci", **kw):
    args = dict(model=models.EMBEDDED, layers=None, device="cpu", dtype="fp32", seed=0, n_requests=None,
                prompt_len=None, output_len=None, rate=None, max_batch=8, kv_cache_gib=0.25, rounds=None, url="",
                url_model="", url_text=False, timeout_s=60.0)
    return hx.settings(preset, **{**args, **kw})


def test_settings_follow_the_preset_keep_what_is_given_and_refuse_bad_values():
    from labkit.core.params import ParamError

    ci, full = _settings("ci"), _settings("full")
    assert ci.device == "cpu" and ci.layers is None  # the embedded model has no `layers`
    for name in ("n_requests", "prompt_len", "output_len", "rounds"):  # sizes: the full preset's are larger
        assert 0 < getattr(ci, name) <= getattr(full, name), name
    assert ci.rate > 0 and full.rate > 0
    given = _settings(n_requests=3, prompt_len=5, output_len=4, rate=2.5, rounds=1)
    assert given[1:] == (None, 3, 5, 4, 2.5, 1)
    assert _settings(model="llama-2-7b").layers >= 1 and _settings(model="llama-2-7b", layers=3).layers == 3
    for bad, name in [({"layers": 2}, "layers"), ({"max_batch": 0}, "max_batch"), ({"url_text": "yes"}, "url_text"),
                      ({"dtype": "int8"}, "dtype"), ({"n_requests": 1}, "n_requests"), ({"timeout_s": 0}, "timeout_s")]:
        with pytest.raises(ParamError, match=name):
            _settings(**bad)


def test_cost_figure_draws_both_paths_round_by_round_and_the_busy_cores():
    import matplotlib.pyplot as plt

    side = _rounds([10.0, 11.0, 12.0], [14.0, 15.0, 16.0])
    fig = hx.cost_figure(side, Floor("decode", 4e7, 1e6, 0.004, None), cores=4)
    try:
        left, right = fig.axes
        lines = {ln.get_label(): list(ln.get_ydata()) for ln in left.get_lines()}
        assert lines[hx.IN] == side.rounds.values[hx.IN]["tpot_median_ms"]
        assert lines[hx.HTTP] == side.rounds.values[hx.HTTP]["tpot_median_ms"]
        assert lines["decode-step floor"][0] == 4.0
        heights = [p.get_height() for p in right.patches]
        assert heights == pytest.approx([side.median(hx.IN, "cpu_cores"), side.median(hx.HTTP, "cpu_cores"),
                                         side.median(hx.HTTP, "client_cpu_cores")])
        assert any(ln.get_label() == "4 cores" for ln in right.get_lines())
    finally:
        plt.close(fig)


def test_your_server_refuses_token_ids_outside_the_servers_vocabulary(tiny_llama):
    vocab = tiny_llama.config.vocab_size
    trace = make_trace(2, prompt_len=8, output_len=2, vocab_size=vocab * 32)
    assert max(t for r in trace for t in r.prompt_ids) >= vocab
    server = start_in_thread(create_app(LLMEngine(tiny_llama, engine_config(4, 0.01)), "tiny"))
    try:
        row = hx.your_server(server.url, "", trace, timeout_s=30, progress=False)
        fits = hx.your_server(server.url, "", make_trace(2, prompt_len=8, output_len=2, vocab_size=vocab),
                              timeout_s=30, progress=False)
    finally:
        server.stop()
    assert row["status"].startswith(f"skipped: 'tiny' takes token ids below {vocab}") and "url_text" in row["status"]
    assert fits["status"] == "ok" and fits["completed"] == 2


def _card(gbps: float) -> Card:
    return Card("test", 16.0, gbps, {"fp32": 1.0}, "test", measured=True)


def test_floor_rows_explain_a_beaten_floor_and_keep_the_fraction_within_it():
    side = _rounds([10.0] * 3, [15.0] * 3)  # TPOT 10 ms in process, 15 ms over HTTP
    beaten = Floor("decode", 1e8, 1e6, 0.02, None)  # 100 MB at 5 GB/s: a 20 ms floor both paths beat
    rows = hx.floor_rows(side, beaten, _card(5.0), "fp32", "a test profile")
    assert [r["path"] for r in rows] == [hx.IN, hx.HTTP]
    # re-derived from the fastest bandwidth either path reached (in process: 100 MB in 10 ms, 10 GB/s)
    assert [r["decode-step floor (ms)"] for r in rows] == pytest.approx([10.0, 10.0])
    assert [r["fraction of the floor"] for r in rows] == pytest.approx([1.0, 10.0 / 15.0])
    assert all("memory bandwidth rate (5.0 GB/s, a test profile)" in r["fraction of the floor_reason"] for r in rows)
    assert all("re-derived" in r["why"] for r in rows)
    from labkit.core.floors import reasons

    assert reasons(rows, "path")[0].startswith(f"{hx.IN}, fraction of the floor: measured 10 ms beat its floor")
    held = Floor("decode", 1e8, 1e6, 0.005, None)  # a 5 ms floor, 20 GB/s: neither path beat it
    rows = hx.floor_rows(side, held, _card(20.0), "fp32")
    assert [r["fraction of the floor"] for r in rows] == pytest.approx([0.5, 5.0 / 15.0])
    assert not any("fraction of the floor_reason" in r for r in rows)
    assert rows[0]["why"].startswith("50% of the memory-bound floor")


def test_cost_figure_draws_the_re_derived_floor_when_the_profiles_was_beaten():
    import matplotlib.pyplot as plt

    side = _rounds([10.0, 11.0, 12.0], [14.0, 15.0, 16.0])
    fig = hx.cost_figure(side, Floor("decode", 1e8, 1e6, 0.02, None), cores=4)
    try:
        lines = {ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].get_lines()}
        label = "decode-step floor (re-derived: the profile's was beaten)"
        assert lines[label][0] == pytest.approx(11.0)  # the faster path's median TPOT: 100 MB at its rate
    finally:
        plt.close(fig)
