import numpy as np
import pytest
import torch

from labkit.core.models import DATA
from labkit.serve.workload import Request, arrival_offsets, make_trace


def test_same_seed_same_trace_and_another_seed_another():
    kw = dict(prompt_len=(4, 20), output_len=(1, 9), arrival="gamma", rate=5.0, burstiness=0.5, vocab_size=256)
    a, b = make_trace(12, seed=3, **kw), make_trace(12, seed=3, **kw)
    assert a == b
    c = make_trace(12, seed=4, **kw)
    assert [r.prompt_ids for r in a] != [r.prompt_ids for r in c]
    assert [r.arrival_s for r in a] != [r.arrival_s for r in c]


def test_shapes_and_ranges():
    trace = make_trace(50, prompt_len=(5, 9), output_len=(2, 4), arrival="poisson", rate=10.0, vocab_size=100)
    assert [r.request_id for r in trace] == list(range(50))
    assert all(isinstance(r, Request) for r in trace)
    assert all(5 <= r.prompt_len <= 9 and len(r.prompt_ids) == r.prompt_len for r in trace)
    assert all(2 <= r.output_len <= 4 for r in trace)
    assert {r.prompt_len for r in trace} == set(range(5, 10))  # the range is inclusive
    assert all(3 <= t < 100 for r in trace for t in r.prompt_ids)
    arrivals = [r.arrival_s for r in trace]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    assert len({r.prompt_ids for r in trace}) == 50  # a different prompt per request


def test_fixed_lengths_and_all_at_once():
    trace = make_trace(4, prompt_len=512, output_len=16, vocab_size=32000)
    assert [(r.prompt_len, r.output_len, r.arrival_s) for r in trace] == [(512, 16, 0.0)] * 4
    assert make_trace(3, prompt_len=4, arrival="poisson", rate=float("inf"))[2].arrival_s == 0.0


def test_mean_gap_is_one_over_rate_and_burstiness_raises_the_variation():
    rng = np.random.default_rng(0)
    poisson = np.diff(arrival_offsets(4000, "poisson", rate=20.0, rng=rng))
    bursty = np.diff(arrival_offsets(4000, "gamma", rate=20.0, burstiness=0.25, rng=rng))
    smooth = np.diff(arrival_offsets(4000, "gamma", rate=20.0, burstiness=4.0, rng=rng))
    for gaps in (poisson, bursty, smooth):
        assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.1)
    cv = {name: g.std() / g.mean() for name, g in [("poisson", poisson), ("bursty", bursty), ("smooth", smooth)]}
    assert cv["poisson"] == pytest.approx(1.0, abs=0.1)  # exponential gaps
    assert cv["bursty"] == pytest.approx(2.0, rel=0.15)  # 1 / sqrt(0.25)
    assert cv["smooth"] == pytest.approx(0.5, rel=0.15)  # 1 / sqrt(4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be"),
    (dict(prompt_len=0), "prompt_len must be >= 1"),
    (dict(output_len=(5, 3)), "output_len range"),
    (dict(prompt_len="long"), "prompt_len must be an int"),
    (dict(output_len=(1, 2, 3)), "output_len must be an int"),
    (dict(arrival="uniform"), "unknown arrival"),
    (dict(arrival="poisson"), "needs rate > 0"),
    (dict(arrival="gamma", rate=-1.0), "needs rate > 0"),
    (dict(arrival="poisson", rate=1.0, burstiness=0.5), "use arrival='gamma'"),
    (dict(arrival="gamma", rate=1.0, burstiness=0.0), "burstiness must be"),
    (dict(rate=2.0), "all-at-once' has no rate"),
    (dict(vocab_size=3), "vocab_size"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    args = dict(n=3, prompt_len=4, output_len=2, vocab_size=256) | kwargs
    with pytest.raises(ValueError, match=match):
        make_trace(**args)


class CharTokenizer:
    """A stand-in tokenizer: one id per character. Counts how often it is called."""

    def __init__(self):
        self.calls = 0

    def __call__(self, text, return_tensors=None, verbose=True):
        self.calls += 1
        return {"input_ids": torch.tensor([[3 + ord(c) % 250 for c in text]])}


def test_with_a_tokenizer_prompts_are_excerpts_of_the_held_out_text_tokenized_once():
    tok = CharTokenizer()
    trace = make_trace(20, prompt_len=(8, 30), output_len=4, tokenizer=tok, seed=1)
    assert tok.calls == 1
    text = tok((DATA / "eval" / "heldout.txt").read_text(encoding="utf-8"))["input_ids"][0].tolist()
    joined = ",".join(map(str, text))
    for r in trace:
        assert ",".join(map(str, r.prompt_ids)) in joined
    assert make_trace(20, prompt_len=(8, 30), output_len=4, tokenizer=tok, seed=1) == trace
