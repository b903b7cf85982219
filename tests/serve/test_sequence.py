import pytest

from labkit.core.bench import summarize
from labkit.serve import SamplingParams, Sequence, SequenceStatus


def test_sampling_params_defaults_are_greedy_and_validated():
    p = SamplingParams()
    assert p.greedy and p.temperature == 0.0 and not p.ignore_eos and p.stop_token_ids == ()
    assert SamplingParams(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)  # stored as a tuple (hashable, frozen)
    assert not SamplingParams(temperature=0.7).greedy
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)


def test_sizes_and_token_views():
    prompt = [5, 6, 7, 8, 9]
    s = Sequence(1, prompt, arrival_time=10.0)
    prompt.append(99)  # the sequence keeps its own copy
    assert s.num_prompt_tokens == 5 and s.num_tokens == 5 and s.num_output_tokens == 0
    assert s.last_token_id == 9
    s.append_token(11, now=10.5)
    s.append_token(12, now=10.7)
    assert s.token_ids == [5, 6, 7, 8, 9, 11, 12] and s.last_token_id == 12 and s.num_tokens == 7
    assert s.num_blocks(4) == 2 and s.num_blocks(7) == 1 and s.num_blocks(1) == 7
    assert s.block_token_ids(0, 4) == [5, 6, 7, 8] and s.block_token_ids(1, 4) == [9, 11, 12]
    assert s.status is SequenceStatus.WAITING and not s.is_finished


def test_timestamps_feed_the_benchmark_metrics():
    s = Sequence(1, [1, 2, 3], arrival_time=100.0)
    for i, t in enumerate([100.5, 100.6, 100.8]):
        s.append_token(i, now=t)
    rt = s.to_request_timing()
    assert rt.prompt_tokens == 3 and rt.output_tokens == 3
    assert rt.ttft == pytest.approx(0.5) and rt.tpot == pytest.approx(0.15)
    assert summarize([rt])["completed"] == 1


def test_finish_requires_terminal_state_and_freed_blocks():
    s = Sequence(1, [1, 2])
    with pytest.raises(ValueError):
        s.finish(SequenceStatus.RUNNING, "nope")
    s.block_table = [3]
    with pytest.raises(RuntimeError, match="free them first"):
        s.finish(SequenceStatus.FINISHED, "length")
    s.block_table = []
    s.finish(SequenceStatus.CANCELLED, "cancelled")
    assert s.is_finished and s.finish_reason == "cancelled"
