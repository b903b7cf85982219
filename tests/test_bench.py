"""The harness's definitions, checked against synthetic timestamps with known answers."""

import numpy as np
import pytest
import torch

from labkit.core import bench, load
from labkit.core.bench import RequestTiming, summarize


class FakeClock:
    """Replaces time.perf_counter: each fake call advances it by a known cost."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", c)
    return c


def test_time_callable_separates_cold_start(clock):
    costs = iter([5.0, 1.0, 2.0, 3.0, 4.0, 9.0])  # cold, 1 discarded warm-up, then 4 repeats

    def fn():
        clock.t += next(costs)

    t = bench.time_callable(fn, warmup=2, repeats=4)
    assert t.cold_s == 5.0
    assert t.times_s == [2.0, 3.0, 4.0, 9.0]
    assert t.median_s == 3.5 and t.min_s == 2.0 and t.max_s == 9.0
    assert t.p90_s == pytest.approx(np.percentile([2, 3, 4, 9], 90))
    assert t.cold_over_warm == pytest.approx(5.0 / 3.5)
    d = t.to_dict()
    assert d["repeats"] == 4 and d["cold_s"] == 5.0


def test_time_callable_rejects_bad_counts():
    with pytest.raises(ValueError):
        bench.time_callable(lambda: None, repeats=0)
    with pytest.raises(ValueError):
        bench.time_callable(lambda: None, warmup=0)


def test_compare_alternates_and_pairs_ratios(clock):
    log = []

    def a():
        log.append("a")
        clock.t += 2.0

    def b():
        log.append("b")
        clock.t += 0.5

    c = bench.compare(a, b, repeats=4, names=("slow", "fast"))
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # cold a, cold b, then ABBA pairs
    assert c.ratios == [4.0] * 4
    assert c.speedup == 4.0
    assert "fast vs slow: 4.00x" in str(c)


def test_request_metrics_follow_vllm_definitions():
    r = RequestTiming(start=10.0, token_times=[10.5, 10.6, 10.8, 11.1], prompt_tokens=512)
    assert r.ttft == pytest.approx(0.5)
    assert r.e2e == pytest.approx(1.1)
    assert r.tpot == pytest.approx((1.1 - 0.5) / 3)
    assert r.itls == pytest.approx([0.1, 0.2, 0.3])
    assert RequestTiming(start=0.0, token_times=[1.0]).tpot is None  # one token: TPOT undefined


def test_summarize_aggregates_and_percentiles():
    reqs = [RequestTiming(start=0.0, token_times=[1.0, 2.0, 3.0], prompt_tokens=10),
            RequestTiming(start=1.0, token_times=[3.0, 3.5], prompt_tokens=20),
            RequestTiming(start=2.0, token_times=[], prompt_tokens=5)]  # never produced a token
    m = summarize(reqs)
    assert m["completed"] == 2
    assert m["duration_s"] == pytest.approx(3.5)
    assert m["total_output_tokens"] == 5 and m["total_input_tokens"] == 30
    assert m["output_throughput"] == pytest.approx(5 / 3.5)
    assert m["request_throughput"] == pytest.approx(2 / 3.5)
    assert m["total_token_throughput"] == pytest.approx(35 / 3.5)
    assert m["ttft_mean_ms"] == pytest.approx(1500.0)  # TTFTs 1.0 and 2.0 s
    assert m["ttft_p99_ms"] == pytest.approx(np.percentile([1000, 2000], 99))
    assert m["tpot_median_ms"] == pytest.approx(np.median([1000.0, 500.0]))
    assert m["itl_mean_ms"] == pytest.approx(np.mean([1000, 1000, 500]))  # every gap of every request
    assert m["e2e_p50_ms"] == pytest.approx(np.median([3000, 2500]))


def test_goodput_counts_requests_within_slo():
    reqs = [RequestTiming(0.0, [0.1, 0.2]), RequestTiming(0.0, [0.9, 1.0])]
    m = summarize(reqs, duration_s=2.0, slo_ms={"ttft": 500})
    assert m["goodput"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown SLO"):
        summarize(reqs, slo_ms={"latency": 1})


def test_summarize_needs_a_completed_request():
    with pytest.raises(ValueError):
        summarize([RequestTiming(0.0, [])])


def test_generate_timed_stamps_every_token_and_matches_generate(tiny_llama):
    ids = torch.randint(3, 256, (1, 20), generator=torch.Generator().manual_seed(1))
    rt, out = bench.generate_timed(tiny_llama, ids, max_new_tokens=7)
    ref = tiny_llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=7, min_new_tokens=7)
    assert torch.equal(out, ref)
    assert rt.output_tokens == 7 and rt.prompt_tokens == 20
    assert all(b >= a for a, b in zip(rt.token_times, rt.token_times[1:], strict=False))
    assert rt.token_times[0] >= rt.start
    with pytest.raises(ValueError):
        bench.generate_timed(tiny_llama, ids.repeat(2, 1), 3)


def test_measure_requests_returns_cold_apart(tiny_llama):
    prompts = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(2))
    cold, warm = bench.measure_requests(tiny_llama, prompts, 4, repeats=2, progress=False)
    assert cold.output_tokens == 4
    assert len(warm) == 4 and all(r.output_tokens == 4 and r.prompt_tokens == 12 for r in warm)


def test_run_rounds_rotates_the_order_and_keeps_the_cold_call_apart(clock):
    log = []
    cost = {"a": 3.0, "b": 1.0, "c": 2.0}

    def make(name):
        def fn():
            log.append(name)
            clock.t += cost[name]
            return {"tokens": 10}
        return fn

    r = bench.run_rounds({n: make(n) for n in "abc"}, 3, progress=False)
    assert log == list("abc") + list("abc") + list("bca") + list("cab")  # cold calls, then rotating rounds
    assert r.cold["a"]["s"] == 3.0 and r.values["a"]["s"] == [3.0] * 3
    assert r.values["b"]["tokens"] == [10.0] * 3  # a returned metric is kept per round
    assert r.ratio("a", "b").value == 3.0  # b is 3x faster than a
    assert r.ratio("a", "b", "tokens", higher_is_better=True).value == 1.0
    log.clear()
    bench.run_rounds({n: make(n) for n in "ab"}, 2, cold=False, progress=False)
    assert log == ["a", "b", "b", "a"]
    with pytest.raises(ValueError):
        bench.run_rounds({"a": make("a")}, 0)


def test_ratio_words_follow_the_numbers_and_call_noise_inconclusive():
    assert bench.Ratio([2.4, 2.5, 2.6]).words() == "2.50x faster"
    assert bench.Ratio([0.4, 0.5, 0.45]).words() == "2.22x slower"
    flat = bench.Ratio([1.02, 0.99, 1.03, 1.01, 1.00])
    assert not flat.conclusive and flat.words().startswith("inconclusive (1.01x")
    torn = bench.Ratio([1.5, 0.7, 1.6, 0.6, 1.4])  # beyond the floor in the median, but rounds disagree
    assert not torn.conclusive
    assert bench.Ratio([1.08] * 5, noise=0.1).words().startswith("inconclusive")
    assert bench.Ratio([1.08] * 5, noise=0.05).words() == "1.08x faster"
    assert bench.Ratio([2.0, 2.0, 2.0]).words("more throughput", "less throughput") == "2.00x more throughput"
    assert f"{bench.Ratio([1.5, 2.5, 2.0]):.1f}" == "2.0"


def test_load_watch_sees_another_process_using_the_cpu():
    import subprocess
    import sys
    import time as _time

    with load.LoadWatch() as quiet:
        _time.sleep(0.6)
    # a busy loop that is not our child (started through a middle process that exits at once): our own and our
    # children's CPU time never counts as "others"
    loop = "import time\nt = time.time()\nwhile time.time() - t < 4: pass"
    starter = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
               "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    pid = int(subprocess.run([sys.executable, "-c", starter, loop], capture_output=True, text=True,
                             check=True).stdout)
    try:
        _time.sleep(0.5)
        with load.LoadWatch() as loaded:
            _time.sleep(1.5)
    finally:
        import os
        import signal

        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if loaded.result["others_cpu_share"] is None:
        pytest.skip("no /proc/stat on this OS: others' CPU use is not measurable")
    # one busy core out of all of them, and nothing of ours: the quiet window must read lower
    assert loaded.result["others_cpu_share"] > 0.5 / (__import__("os").cpu_count() or 1)
    assert loaded.result["busy"] and "another process used" in loaded.warning
    assert quiet.result["others_cpu_share"] < loaded.result["others_cpu_share"]


def test_summarize_counts_failed_requests():
    ok = RequestTiming(start=0.0, token_times=[1.0, 2.0], prompt_tokens=4)
    failed = RequestTiming(start=0.0, token_times=[], prompt_tokens=4)
    m = summarize([ok, failed, failed])
    assert m["completed"] == 1 and m["failed"] == 2
    with pytest.raises(ValueError, match="3 sent, all failed"):
        summarize([failed] * 3)


def test_fit_threads_leaves_busy_cores_to_their_owners(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(load.os, "cpu_count", lambda: 2)
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(load.LoadWatch, "read", lambda self: {"others_cpu_share": 0.02})
        assert load.fit_threads(0.0) is None and torch.get_num_threads() == 2  # idle: nothing changes
        monkeypatch.setattr(load.LoadWatch, "read", lambda self: {"others_cpu_share": 0.5})
        line = load.fit_threads(0.0)
        assert torch.get_num_threads() == 1 and "1.0 of 2 cores" in line and "1 thread(s) instead of 2" in line
        monkeypatch.setattr(load.LoadWatch, "read", lambda self: {"others_cpu_share": 1.0})
        assert load.fit_threads(0.0) is None and torch.get_num_threads() == 1  # never below one thread
    finally:
        torch.set_num_threads(before)


def test_bench_still_offers_the_load_watch_its_callers_use():
    """course.lesson and lessons.parallelism reach the load watch as bench.LoadWatch / bench.fit_threads."""
    assert bench.LoadWatch is load.LoadWatch and bench.fit_threads is load.fit_threads


def test_run_rounds_does_not_start_a_round_that_would_end_past_the_deadline(clock):
    """A round takes 6 s on the fake clock: with 13 s left two rounds fit and the third is not started; the Rounds
    say 3 were asked and what a round took. At least one round runs even when the deadline has passed."""
    def fn():
        clock.t += 3.0
        return {"tokens": 1}

    start = clock.t
    r = bench.run_rounds({"a": fn, "b": fn}, 3, cold=False, progress=False, deadline=start + 13.0)
    assert r.done == 2 and r.asked == 3 and r.round_s == 6.0 and len(r.values["a"]["tokens"]) == 2
    assert r.to_dict()["asked"] == 3
    r = bench.run_rounds({"a": fn, "b": fn}, 2, cold=False, progress=False, deadline=clock.t + 100.0)
    assert r.done == 2 and r.asked == 0 and r.to_dict()["asked"] == 2  # all ran
    r = bench.run_rounds({"a": fn}, 3, cold=False, progress=False, deadline=clock.t - 1.0)
    assert r.done == 1 and r.asked == 3


def test_run_rounds_records_the_load_it_watched(monkeypatch):
    monkeypatch.setattr(load.LoadWatch, "read", lambda self: setattr(self, "result", {"busy": False, "seen": 1}))
    r = bench.run_rounds({"a": lambda: None}, 2, progress=False)
    assert r.load == {"busy": False, "seen": 1}
