"""The engine's one configuration: one set of defaults whoever builds the engine, every value checked at once, and
every option changing what the engine does (an option that changes nothing would be a promise not kept)."""

import pytest
import torch

from labkit.serve import SamplingParams
from labkit.serve.config import DEFAULT_BATCHED_TOKENS, DEFAULT_KV_CACHE_BYTES, OPTIONS, EngineConfig
from labkit.serve.engine import LLMEngine
from labkit.serve.runner import ModelRunner

SMALL = dict(block_size=4, num_blocks=64, max_model_len=64)  # a cache that costs nothing to allocate


def build(model, **overrides) -> LLMEngine:
    return LLMEngine.from_model(model, EngineConfig(**SMALL), **overrides)


def run(eng: LLMEngine, prompts, max_tokens=4, **params) -> list[list[int]]:
    return eng.generate(prompts, SamplingParams(max_tokens=max_tokens, ignore_eos=True, **params))


# ---------------------------------------------------------------- one set of defaults, one builder

def test_every_builder_resolves_the_same_defaults(tiny_llama):
    """The lesson's, the case study's and the server's engines leave the options they do not set to EngineConfig's
    defaults: one token budget, one policy, one cache budget (checked without allocating it)."""
    from labkit.lessons import batching
    from labkit.lessons.casestudy import quality
    from labkit.serve.api import engine_config
    from labkit.serve.workload import make_trace

    trace = make_trace(2, prompt_len=8, output_len=4, vocab_size=256)
    small = {"kv_cache_bytes": 64 * ModelRunner.kv_bytes_per_block(tiny_llama, 16)}
    engines = {"from_model": LLMEngine.from_model(tiny_llama, max_num_seqs=4, **small),
               "engine_for": batching.engine_for(tiny_llama, trace, 4, **small),
               "server": LLMEngine(tiny_llama, engine_config(4, small["kv_cache_bytes"] / 2**30)),
               "casestudy": quality._small_engine(tiny_llama, "sdpa", 4, 64)}
    default = EngineConfig()
    for name, eng in engines.items():
        c = eng.config
        assert c.max_num_batched_tokens == DEFAULT_BATCHED_TOKENS, name
        assert (c.block_size, c.mixed_batches, c.enable_chunked_prefill, c.enable_prefix_caching, c.attention,
                c.seed) == (default.block_size, default.mixed_batches, default.enable_chunked_prefill,
                            default.enable_prefix_caching, default.attention, default.seed), name
        assert eng.scheduler.config is c  # the scheduler reads the engine's own config: no second copy
    assert engine_config() == default and default.cache_bytes == DEFAULT_KV_CACHE_BYTES


def test_the_budget_follows_the_policy_when_left_out():
    assert EngineConfig().resolved(128, 8).max_num_batched_tokens == DEFAULT_BATCHED_TOKENS
    assert EngineConfig(max_num_seqs=600).resolved(128, 8).max_num_batched_tokens == 600
    assert EngineConfig(enable_chunked_prefill=False).resolved(2048, 8).max_num_batched_tokens == 2048
    assert EngineConfig(max_num_batched_tokens=64).resolved(2048, 8).max_num_batched_tokens == 64


def test_from_model_overrides_fields_of_a_config(tiny_llama):
    base = EngineConfig(max_num_seqs=3, **SMALL)
    eng = LLMEngine.from_model(tiny_llama, base, seed=7)
    assert (eng.config.max_num_seqs, eng.config.seed) == (3, 7) and base.seed == 0
    with pytest.raises(TypeError, match="max_batch"):
        LLMEngine.from_model(tiny_llama, max_batch=3)  # an unknown option fails, never ignored
    with pytest.raises(TypeError, match="EngineConfig"):
        LLMEngine(tiny_llama, {"max_num_seqs": 3})


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs, match", [
    (dict(max_num_seqs=0), r"max_num_seqs must be >= 1, got 0"),
    (dict(max_num_seqs=2.5), r"max_num_seqs must be an int, got 2.5"),
    (dict(max_num_seqs=True), r"max_num_seqs must be an int"),
    (dict(max_num_batched_tokens=0), r"max_num_batched_tokens must be >= 1"),
    (dict(max_num_seqs=32, max_num_batched_tokens=16), r"must be >= max_num_seqs \(32\)"),
    (dict(max_num_batched_tokens=16, max_model_len=64, enable_chunked_prefill=False), r"not split across steps"),
    (dict(block_size=0), r"block_size must be >= 1"),
    (dict(num_blocks=-1), r"num_blocks must be >= 1"),
    (dict(kv_cache_bytes=0), r"kv_cache_bytes must be >= 1"),
    (dict(num_blocks=8, kv_cache_bytes=1 << 20), r"give num_blocks \(8\) or kv_cache_bytes"),
    (dict(max_model_len=0), r"max_model_len must be >= 1"),
    (dict(seed=-1), r"seed must be >= 0"),
    (dict(mixed_batches=1), r"mixed_batches must be True or False"),
    (dict(enable_prefix_caching="yes"), r"enable_prefix_caching must be True or False"),
    (dict(attention="flash3"), r"unknown attention 'flash3'; choose one of \['sdpa', 'eager'\]"),
])
def test_values_out_of_range_are_refused_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**kwargs)


def test_a_cache_budget_below_one_block_is_refused(tiny_llama):
    per_block = ModelRunner.kv_bytes_per_block(tiny_llama, 4)
    with pytest.raises(ValueError, match=f"holds no KV block: one block of 4 tokens takes {per_block} bytes"):
        LLMEngine.from_model(tiny_llama, block_size=4, kv_cache_bytes=per_block - 1)


# ---------------------------------------------------------------- each option changes behaviour

BEHAVIOUR = {}  # option -> the test that shows it matters


def _shows(*options):
    def mark(fn):
        BEHAVIOUR.update(dict.fromkeys(options, fn.__name__))
        return fn
    return mark


@_shows("max_num_seqs")
def test_max_num_seqs_bounds_the_batch(tiny_llama):
    prompts = [[5 + i, 6, 7] for i in range(6)]
    for n in (2, 5):
        eng = build(tiny_llama, max_num_seqs=n)
        run(eng, prompts)
        assert max(s.num_seqs for s in eng.stats) == n


@_shows("max_num_batched_tokens", "enable_chunked_prefill")
def test_the_token_budget_and_chunked_prefill_bound_a_step(tiny_llama):
    prompt = list(range(10, 50))  # 40 tokens
    chunked = build(tiny_llama, max_num_batched_tokens=16)
    run(chunked, [prompt])
    assert [s.num_tokens for s in chunked.stats[:3]] == [16, 16, 8]
    whole = build(tiny_llama, max_num_batched_tokens=64, enable_chunked_prefill=False)
    run(whole, [prompt])
    assert whole.stats[0].num_tokens == 40
    wide = build(tiny_llama, max_num_batched_tokens=64)
    run(wide, [prompt])
    assert wide.stats[0].num_tokens == 40


@_shows("mixed_batches")
def test_mixed_batches_lets_decodes_share_steps_with_prefills(tiny_llama):
    def shared_steps(mixed: bool) -> int:
        eng = build(tiny_llama, max_num_seqs=4, max_num_batched_tokens=8, mixed_batches=mixed)
        eng.add_request([5, 6, 7], SamplingParams(max_tokens=12, ignore_eos=True))
        eng.step()
        eng.add_request(list(range(10, 40)), SamplingParams(max_tokens=2, ignore_eos=True))
        while eng.has_unfinished():
            eng.step()
        return sum(s.is_prefill and s.num_seqs > 1 for s in eng.stats)

    assert shared_steps(True) > 0 and shared_steps(False) == 0


@_shows("block_size", "num_blocks", "kv_cache_bytes")
def test_cache_geometry_sizes_the_cache_and_forces_preemption_when_small(tiny_llama):
    eng = build(tiny_llama, block_size=8, num_blocks=10)
    assert eng.runner.k_cache.shape[1] == 80 and eng.scheduler.block_manager.num_blocks == 10
    eng.add_request(list(range(10, 30)), SamplingParams(max_tokens=2))
    eng.step()
    assert len(eng.get(0).block_table) == 3  # 20 tokens in blocks of 8
    per_block = ModelRunner.kv_bytes_per_block(tiny_llama, 4)
    sized = LLMEngine.from_model(tiny_llama, block_size=4, max_model_len=64, kv_cache_bytes=7 * per_block)
    assert sized.config.num_blocks == 7
    prompts = [list(range(10 + i, 30 + i)) for i in range(4)]
    roomy, tight = build(tiny_llama, num_blocks=64), build(tiny_llama, num_blocks=12)
    assert run(roomy, prompts, 16) == run(tight, prompts, 16)  # preemption recomputes: the same tokens
    assert sum(s.num_preemptions for s in tight.requests.values()) > 0
    assert sum(s.num_preemptions for s in roomy.requests.values()) == 0


@_shows("max_model_len")
def test_max_model_len_rejects_what_would_not_fit(tiny_llama):
    prompt = list(range(10, 40))
    assert run(build(tiny_llama, max_model_len=64), [prompt]) != [[]]
    short = build(tiny_llama, max_model_len=32)
    assert run(short, [prompt]) == [[]] and "max_model_len=32" in short.get(0).finish_reason


@_shows("enable_prefix_caching")
def test_prefix_caching_skips_the_shared_prefix(tiny_llama):
    prompt = list(range(10, 42))
    for cache, second_step in ((False, 32), (True, 4)):  # 28 tokens = 7 full blocks of 4 taken from the cache
        eng = build(tiny_llama, enable_prefix_caching=cache, max_num_seqs=1)
        run(eng, [prompt], 2)
        eng.stats.clear()
        run(eng, [prompt], 2)
        assert eng.stats[0].num_tokens == second_step


@_shows("attention")
def test_attention_picks_the_kernel(tiny_llama, monkeypatch):
    from labkit.serve import runner

    calls = []
    real = runner.eager_attention
    monkeypatch.setattr(runner, "eager_attention", lambda *a: calls.append(1) or real(*a))
    sdpa = run(build(tiny_llama, attention="sdpa"), [[5, 6, 7, 8]])
    assert not calls
    assert run(build(tiny_llama, attention="eager"), [[5, 6, 7, 8]]) == sdpa and calls


@_shows("seed")
def test_the_seed_decides_sampled_tokens(tiny_llama):
    prompts = [[5, 6, 7, 8]] * 4

    def sampled(seed):
        with torch.random.fork_rng():
            return run(build(tiny_llama, seed=seed), prompts, 16, temperature=1.0)

    assert sampled(1) == sampled(1) != sampled(2)


def test_every_option_is_shown_to_matter():
    assert set(BEHAVIOUR) == set(OPTIONS), f"options without a behaviour test: {set(OPTIONS) - set(BEHAVIOUR)}"
