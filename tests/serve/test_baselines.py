"""The baselines on a tiny random fp32 Llama: the tokens must equal `generate` on each prompt alone, the
timings must be well formed. Nothing here asserts how fast anything is."""

import time

import pytest
import torch

from labkit.serve.baselines import Unavailable, run_engine, run_hf_continuous, run_sequential, run_static
from labkit.serve.sequence import SamplingParams, Sequence, SequenceStatus
from labkit.serve.workload import Request, make_trace


def alone(model, r: Request) -> list[int]:
    """What `generate` gives for this prompt on its own: greedy, exactly output_len tokens."""
    ids = torch.tensor([r.prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=r.output_len,
                         min_new_tokens=r.output_len)
    return out[0, r.prompt_len:].tolist()


def check_timings(trace, timings, outputs):
    """One timing and one token list per request, the right counts, time moving forwards, nothing before
    its arrival, and starts spaced exactly as the trace's arrivals."""
    assert len(timings) == len(outputs) == len(trace)
    for r, rt, out in zip(trace, timings, outputs, strict=True):
        assert len(out) == r.output_len == rt.output_tokens
        assert rt.prompt_tokens == r.prompt_len
        assert rt.start <= rt.token_times[0]
        assert rt.token_times == sorted(rt.token_times)
    t0 = timings[0].start - trace[0].arrival_s
    for r, rt in zip(trace, timings, strict=True):
        assert rt.start == pytest.approx(t0 + r.arrival_s, abs=1e-9)


@pytest.fixture
def mixed_trace():
    return make_trace(4, prompt_len=(3, 12), output_len=(1, 6), arrival="poisson", rate=200.0, vocab_size=256,
                      seed=2)


def test_sequential_equals_generate_alone(tiny_llama, mixed_trace):
    timings, outputs = run_sequential(tiny_llama, mixed_trace)
    assert outputs == [alone(tiny_llama, r) for r in mixed_trace]
    check_timings(mixed_trace, timings, outputs)


def test_sequential_queueing_is_part_of_ttft(tiny_llama):
    trace = make_trace(2, prompt_len=5, output_len=4, vocab_size=256)  # both arrive at 0
    timings, _ = run_sequential(tiny_llama, trace)
    assert timings[1].start == timings[0].start
    assert timings[1].token_times[0] > timings[0].token_times[-1]  # waited for request 0 to finish
    # the server knows when it started on each: request 1 only after request 0 was done
    assert timings[0].service_start >= timings[0].start
    assert timings[1].service_start >= timings[0].token_times[-1]


def test_prefill_bound_is_amdahl_over_the_sequential_busy_time():
    from labkit.core.bench import RequestTiming
    from labkit.lessons.batching import prefill_bound

    ts = [RequestTiming(start=0.0, token_times=[1.5, 2.0, 2.5], service_start=1.0),  # prefill 0.5 of 1.5 busy
          RequestTiming(start=0.0, token_times=[3.0, 4.5], service_start=2.5)]  # prefill 0.5 of 2.0 busy
    b = prefill_bound(ts)
    assert b["prefill_share"] == pytest.approx(1.0 / 3.5)
    assert b["max_x_vs_sequential"] == pytest.approx(3.5)
    # 3 decode steps' worth of tokens (2 + 1) at a batch of 2 taking 0.25 s each: 1.5 steps -> 0.375 s
    b = prefill_bound(ts, decode_step_s=0.25, batch=2)
    assert b["max_x_at_batch"] == pytest.approx(3.5 / (1.0 + 0.375))
    assert prefill_bound([RequestTiming(start=0.0, token_times=[1.0])]) == {}  # no service start recorded


def test_static_equal_prompt_lengths_equals_generate_alone(tiny_llama):
    trace = make_trace(4, prompt_len=8, output_len=(1, 6), vocab_size=256, seed=5)
    timings, outputs = run_static(tiny_llama, trace, batch_size=4, max_wait_s=0.0)
    assert outputs == [alone(tiny_llama, r) for r in trace]
    check_timings(trace, timings, outputs)
    # one batch: the same first token time; every response complete when the batch finishes
    assert len({rt.token_times[0] for rt in timings if rt.output_tokens > 1}) == 1
    assert len({rt.token_times[-1] for rt in timings}) == 1


def test_static_left_padding_keeps_greedy_tokens_on_the_tiny_model(tiny_llama, mixed_trace):
    # Left padding with an attention mask changes only rounding, not the argmax, on this tiny fp32 model:
    # it holds here, which is what lets this test compare mixed prompt lengths token for token.
    timings, outputs = run_static(tiny_llama, mixed_trace, batch_size=4, max_wait_s=1.0)
    assert outputs == [alone(tiny_llama, r) for r in mixed_trace]
    check_timings(mixed_trace, timings, outputs)


def test_static_waits_for_a_full_batch_or_the_timeout(tiny_llama):
    prompts = make_trace(3, prompt_len=6, output_len=3, vocab_size=256, seed=7)
    arrivals = [0.0, 0.0, 0.3]
    trace = [Request(i, arrivals[i], p.prompt_ids, p.output_len) for i, p in enumerate(prompts)]
    timings, outputs = run_static(tiny_llama, trace, batch_size=3, max_wait_s=0.05)
    check_timings(trace, timings, outputs)
    # the timeout sends requests 0 and 1 as one batch; request 2, arriving later, runs alone
    assert timings[0].token_times == timings[1].token_times
    assert timings[0].token_times[0] - timings[0].start >= 0.05
    assert timings[2].token_times[0] > timings[1].token_times[-1]
    assert outputs == [alone(tiny_llama, r) for r in trace]


def test_static_rejects_bad_arguments(tiny_llama, mixed_trace):
    with pytest.raises(ValueError, match="batch_size"):
        run_static(tiny_llama, mixed_trace, batch_size=0, max_wait_s=0.1)
    with pytest.raises(ValueError, match="max_wait_s"):
        run_static(tiny_llama, mixed_trace, batch_size=2, max_wait_s=-1)
    with pytest.raises(ValueError, match="empty"):
        run_sequential(tiny_llama, [])


class FakeEngine:
    """The engine's API over a fake model: every running sequence gets token (last + 1) % 256 per step.
    Prompts longer than `max_len` are rejected at add_request, as the real scheduler does."""

    def __init__(self, max_len: int = 100):
        self.max_len = max_len
        self.seqs: dict[int, Sequence] = {}
        self.running: list[Sequence] = []
        self.steps = 0

    def add_request(self, prompt_ids, params: SamplingParams, arrival_time=None) -> int:
        now = time.perf_counter() if arrival_time is None else arrival_time
        seq = Sequence(len(self.seqs), prompt_ids, params, arrival_time=now)
        self.seqs[seq.seq_id] = seq
        if len(prompt_ids) > self.max_len:
            seq.finish(SequenceStatus.REJECTED, "rejected: too long")
        else:
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
        return seq.seq_id

    def step(self) -> list[Sequence]:
        self.steps += 1
        now = time.perf_counter()
        for seq in self.running:
            seq.append_token((seq.last_token_id + 1) % 256, now)
        done = [s for s in self.running if s.num_output_tokens >= s.sampling_params.max_tokens]
        for s in done:
            s.finish(SequenceStatus.FINISHED, "length")
        self.running = [s for s in self.running if s not in done]
        return done

    def has_unfinished(self) -> bool:
        return bool(self.running)

    def get(self, seq_id: int) -> Sequence | None:
        return self.seqs.get(seq_id)


def test_run_engine_feeds_requests_as_they_arrive():
    trace = make_trace(6, prompt_len=(2, 5), output_len=(1, 5), arrival="poisson", rate=100.0, vocab_size=256,
                       seed=3)
    engine = FakeEngine()
    timings, outputs = run_engine(engine, trace)
    expected = [[(r.prompt_ids[-1] + k) % 256 for k in range(1, r.output_len + 1)] for r in trace]
    assert outputs == expected
    check_timings(trace, timings, outputs)
    for rt in timings:  # added only once arrived: the first token comes after the arrival
        assert rt.token_times[0] >= rt.start
    assert not engine.has_unfinished()


def test_run_engine_returns_a_rejected_request_without_tokens():
    trace = [Request(0, 0.0, (5, 6, 7), 2), Request(1, 0.01, tuple(range(3, 20)), 2)]
    timings, outputs = run_engine(FakeEngine(max_len=10), trace)
    assert outputs == [[8, 9], []]
    assert timings[1].output_tokens == 0 and timings[0].output_tokens == 2


@pytest.mark.parametrize("max_requests_per_batch", [None, 2])
def test_hf_continuous_batching_equals_generate_alone(tiny_llama, mixed_trace, max_requests_per_batch):
    try:
        timings, outputs = run_hf_continuous(tiny_llama, mixed_trace, page_size=16,
                                             max_requests_per_batch=max_requests_per_batch)
    except Unavailable as e:
        pytest.skip(f"skipped: {e}")
    assert tiny_llama.config._attn_implementation == "sdpa"  # the manager put the model back as it was
    assert outputs == [alone(tiny_llama, r) for r in mixed_trace]
    check_timings(mixed_trace, timings, outputs)


def test_hf_continuous_batching_says_why_it_cannot_run():
    with pytest.raises(Unavailable, match="no continuous batching"):
        run_hf_continuous(torch.nn.Linear(2, 2), make_trace(1, prompt_len=2, output_len=1, vocab_size=256))


def test_decode_step_time_counts_only_full_back_to_back_decode_steps():
    from types import SimpleNamespace

    from labkit.lessons.batching import decode_step_s
    from labkit.serve.engine import StepStat

    st = [StepStat(0.0, True, 2, 64, 0, 0),  # a prefill: the gap after it is not a decode step's time
          StepStat(1.0, False, 2, 2, 0, 0), StepStat(1.2, False, 2, 2, 0, 0), StepStat(1.5, False, 2, 2, 0, 0),
          StepStat(5.0, False, 1, 1, 0, 0)]  # one sequence left: not a full batch
    assert decode_step_s(SimpleNamespace(stats=st), 2) == pytest.approx(0.25)
    assert decode_step_s(SimpleNamespace(stats=st), 4) is None


def test_decode_step_profile_accounts_for_the_step(tiny_llama):
    from labkit.core import roofline
    from labkit.lessons.batching import STEP_PARTS, profile_decode_step
    from labkit.serve.engine import EngineConfig, LLMEngine

    eng = LLMEngine(tiny_llama, EngineConfig(max_num_seqs=4, block_size=4, num_blocks=64, max_model_len=64))
    card = roofline.Card("test", 16.0, 40.0, {"fp32": 0.2, "bf16": 0.8, "int8": 1.6}, "test")
    p = profile_decode_step(eng, [[5 + i] * (8 + i) for i in range(4)], steps=3, hw=card)
    assert p["batch"] == p["asked"] == 4 and p["step_ms"] > 0  # each request outlives the others' prefills
    parts = [p[label] for label in STEP_PARTS.values()] + [p["other operators"], p["python and scheduling"]]
    assert all(x >= 0 for x in parts) and p[STEP_PARTS["labkit::linears"]] > 0
    assert sum(parts) == pytest.approx(p["step_ms"], rel=0.35)  # the parts add up to the step, give or take
    assert p["memory_floor_ms"] > 0 and p["compute_floor_ms"] > 0
    assert not eng.has_unfinished() and eng.scheduler.block_manager.num_free_blocks == 64  # it cleaned up


def test_decode_step_profile_names_the_batch_that_ran_not_the_one_asked(tiny_llama):
    """With a short context, the first requests finish while the last prompts are still being prefilled: the
    profile reports the smaller batch its steps ran, and the words name it (issue #28: "a full batch" over a
    figure of batch 2)."""
    from labkit.lessons.batching import batch_words, profile_decode_step
    from labkit.serve.engine import EngineConfig, LLMEngine

    eng = LLMEngine(tiny_llama, EngineConfig(max_num_seqs=4, block_size=4, num_blocks=64, max_model_len=24,
                                             max_num_batched_tokens=4))
    p = profile_decode_step(eng, [[5 + i] * (8 + i) for i in range(4)], steps=3)
    assert p["asked"] == 4 and 1 <= p["batch"] < 4
    assert batch_words(p).startswith(f"{p['batch']:.0f} sequence") and "4 asked" in batch_words(p)
    assert not eng.has_unfinished()


def test_compare_servers_in_rotating_rounds(tiny_llama, mixed_trace, monkeypatch):
    """Each server replays once per round: its row is the median round's replay, every round's throughput is
    listed, a ratio is the median of the per-round ratios, the engine's stats are one replay's, and a server
    that cannot run is tried once and skipped with its reason."""
    import statistics

    from labkit.lessons import batching as experiment
    from labkit.lessons.batching import servers

    calls = []

    def unavailable(*a, **k):
        calls.append(1)
        raise Unavailable("no continuous batching in this build")

    monkeypatch.setattr(servers, "run_hf_continuous", unavailable)
    rows, replays, engine = experiment.compare_servers(tiny_llama, mixed_trace, ["sequential", "static", "engine",
                                                                                "hf-continuous"],
                                                       max_batch=2, rounds=3, progress=False)
    ok = {r["server"]: r for r in rows if r["status"] == "ok"}
    assert set(ok) == {"sequential", "static", "engine"}
    assert [r["status"] for r in rows if r["server"] == "hf-continuous"] == [
        "skipped: no continuous batching in this build"] and len(calls) == 1
    for r in ok.values():
        assert r["rounds"] == 3 and len(r["throughput_rounds"]) == 3
        assert r["output_throughput"] == pytest.approx(sorted(r["throughput_rounds"])[1])
        assert r["same_tokens_as_sequential"] == 1.0
    per = [e / s for e, s in zip(ok["engine"]["throughput_rounds"], ok["static"]["throughput_rounds"], strict=True)]
    assert ok["engine"]["throughput_x_vs_static"] == pytest.approx(statistics.median(per))
    assert sum(st.num_tokens for st in engine.stats) == sum(r.prompt_len + r.output_len - 1 for r in mixed_trace)
    with pytest.raises(ValueError, match="rounds"):
        experiment.compare_servers(tiny_llama, mixed_trace, ["static"], rounds=0, progress=False)


def test_versus_lines_are_built_from_the_rounds():
    from labkit.lessons.batching import versus_lines

    def row(server, tput):
        return {"server": server, "status": "ok", "throughput_rounds": tput}

    three = versus_lines([row("engine", [30.0, 33.0, 36.0]), row("static", [20.0, 20.0, 24.0]),
                          row("hf-continuous", [29.0, 34.0, 35.0])], "trace 1")
    assert three[0] == ("trace 1: the engine's output throughput against static: 1.50x higher (median of 3 rotating "
                        "rounds, 1.50-1.65x)")
    assert three[1] == ("trace 1: the engine's output throughput against hf-continuous: inconclusive (1.03x, rounds "
                        "0.97-1.03x, noise floor ±5%) (3 rotating rounds)")
    one = versus_lines([row("engine", [10.0]), row("static", [20.0]), {"server": "hf-continuous",
                                                                       "status": "skipped: no"}], "all at once")
    assert one == ["all at once: the engine's output throughput against static: 2.00x lower (one replay each)"]
    assert versus_lines([row("static", [1.0])], "x") == []
