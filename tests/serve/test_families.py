"""Every family the engine runs, on a tiny seeded random model: the engine's greedy tokens equal `generate`'s for
every request (100%), with chunked prefill, forced preemption, prefix caching and staggered arrivals; and the
family's distinctive feature is really exercised (turning it off in the runner changes the tokens)."""

import dataclasses
import functools
import random

import pytest
import torch

from labkit.core.tiny_models import FAMILIES, WINDOW, tiny_config, tiny_model
from labkit.serve import SamplingParams
from labkit.serve import families as fam_mod
from labkit.serve.engine import EngineConfig, LLMEngine

VOCAB = 256


@functools.cache
def _model(kind):
    return tiny_model(kind, seed=0, vocab_size=VOCAB)


def _reference(model, prompt, n):
    """Greedy `generate` for exactly n tokens: eos_token_id=None, so generate neither stops at EOS nor (as
    min_new_tokens would) forbids it; the engine with ignore_eos may pick EOS like any other token."""
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _prompts(n, seed, lo, hi):
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def _identical(model, prompts, outs, n):
    refs = [_reference(model, p, n) for p in prompts]
    return sum(got == ref for got, ref in zip(outs, refs, strict=True))


def _preempting_engine(model, chunked, attention="sdpa"):
    # 14 blocks of 8 tokens cannot hold five sequences of up to 60 + 20 tokens: the newest get preempted and
    # recomputed; a 16-token budget splits every prompt (and recompute) into chunks, past the sliding window
    return LLMEngine(model, EngineConfig(max_num_seqs=5, block_size=8, num_blocks=14, max_model_len=256,
                                         enable_chunked_prefill=chunked, attention=attention,
                                         max_num_batched_tokens=16 if chunked else None))


def _run_staggered(eng, prompts, n):
    params = SamplingParams(max_tokens=n, ignore_eos=True)
    ids = [eng.add_request(prompts[0], params), eng.add_request(prompts[1], params)]
    for _ in range(3):
        eng.step()
    ids += [eng.add_request(p, params) for p in prompts[2:]]  # arrive while the first two decode
    while eng.has_unfinished():
        eng.step()
    return [eng.get(i).output_token_ids for i in ids], sum(eng.get(i).num_preemptions for i in ids)


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "whole-prefill"])
def test_every_request_equals_generate_under_preemption(kind, chunked):
    model = _model(kind)
    assert fam_mod.unsupported_reason(model) is None
    prompts = _prompts(5, seed=2, lo=20, hi=60)
    outs, preempted = _run_staggered(_preempting_engine(model, chunked), prompts, 20)
    assert preempted > 0
    same = _identical(model, prompts, outs, 20)
    assert same == len(prompts), f"{kind}: {same}/{len(prompts)} requests identical to generate"


@pytest.mark.parametrize("kind", FAMILIES)
def test_prefix_caching_equals_generate(kind):
    model = _model(kind)
    shared = _prompts(1, seed=3, lo=40, hi=40)[0]
    prompts = [shared + [100 + i, 200 + i] for i in range(3)]
    eng = LLMEngine(model, EngineConfig(max_num_seqs=2, block_size=8, num_blocks=64, max_model_len=256,
                                        enable_prefix_caching=True))
    outs = eng.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
    assert _identical(model, prompts, outs, 12) == len(prompts)


@pytest.mark.parametrize("kind", ["mistral", "gemma3_text", "qwen3_moe", "gpt_oss"])
def test_eager_attention_equals_generate(kind):
    model = _model(kind)
    prompts = _prompts(3, seed=4, lo=20, hi=50)
    eng = LLMEngine(model, EngineConfig(max_num_seqs=3, block_size=8, num_blocks=64, max_model_len=256,
                                        attention="eager", enable_chunked_prefill=True, max_num_batched_tokens=16))
    outs = eng.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    assert _identical(model, prompts, outs, 16) == len(prompts)


@pytest.mark.parametrize("kind", ["mistral", "phi3", "gemma3_text", "gpt_oss"])
def test_the_sliding_window_is_what_makes_them_equal(kind, monkeypatch):
    """The windows are read per layer (Gemma 3, gpt-oss: sliding layers mixed with full ones), and ignoring them
    (every key visible) gives other tokens on prompts longer than the window: the equality above tests it."""
    model = _model(kind)
    fam = fam_mod.family(model)
    want = [WINDOW if t == "sliding_attention" else None for t in model.config.layer_types] \
        if kind in ("gemma3_text", "gpt_oss") else [WINDOW] * model.config.num_hidden_layers
    assert list(fam.windows) == want
    prompts = _prompts(4, seed=5, lo=3 * WINDOW, hi=4 * WINDOW)
    full = dataclasses.replace(fam, windows=(None,) * len(fam.windows))
    monkeypatch.setattr(fam_mod, "family", lambda m: full)
    eng = LLMEngine(model, EngineConfig(max_num_seqs=4, block_size=8, num_blocks=128, max_model_len=256))
    outs = eng.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    assert _identical(model, prompts, outs, 16) < len(prompts)


FEATURES = {  # family: (what the runner reads from the model, the same family with that feature left out)
    "smollm3": (dict(rope_on=(True, False)), dict(rope_on=(True, True))),  # layer 1 is a NoPE layer
    "ministral3": (dict(q_scale=(0.1, 32)), dict(q_scale=None)),  # queries scaled past 32 positions
    "gpt_oss": (dict(sinks=True, half_rope=True), dict(sinks=False)),  # attention sinks
}


@pytest.mark.parametrize("kind", sorted(FEATURES))
def test_each_newer_familys_feature_is_what_makes_it_equal(kind, monkeypatch):
    """SmolLM3's NoPE layer, Ministral 3's Llama-4 query scale and gpt-oss's sinks are read from the model (the
    tiny configs turn each on), and the runner without the feature gives other tokens on the prompts the
    equality tests use (40-60 tokens: past Ministral 3's original context of 32): so those equalities test it."""
    model = _model(kind)
    fam = fam_mod.family(model)
    read, without = FEATURES[kind]
    assert {k: getattr(fam, k) for k in read} == read
    prompts = _prompts(4, seed=7, lo=40, hi=60)
    config = EngineConfig(max_num_seqs=4, block_size=8, num_blocks=128, max_model_len=256)
    assert _identical(model, prompts, LLMEngine(model, config).generate(
        prompts, SamplingParams(max_tokens=12, ignore_eos=True)), 12) == len(prompts)
    monkeypatch.setattr(fam_mod, "family", lambda m: dataclasses.replace(fam, **without))
    outs = LLMEngine(model, config).generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
    assert _identical(model, prompts, outs, 12) < len(prompts)


def test_gpt_oss_sinks_equal_the_modeling_codes_softmax_with_a_sink_column():
    """with_sinks turns an ordinary attention call into gpt-oss's: softmax over [scores, sink] with the sink's
    column dropped, for a causal prefill and for a masked decode batch, through SDPA and the eager kernel."""
    from torch.nn import functional as F

    from labkit.techniques.kernels import eager_attention

    g = torch.Generator().manual_seed(0)
    sinks = torch.randn(4, generator=g)
    for n, end, causal in ((6, 6, True), (1, 9, False)):
        q, k, v = (torch.randn(2, h, m, 8, generator=g) for h, m in ((4, n), (2, end), (2, end)))
        mask = None if causal else torch.arange(end)[None, None, None, :] < torch.tensor([9, 5])[:, None, None, None]
        kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        scores = (q @ kk.transpose(-1, -2)) * 0.3
        vis = torch.ones(n, end, dtype=torch.bool).tril(end - n) if causal else mask.expand(2, 4, n, end)
        scores = scores.masked_fill(~vis, float("-inf"))
        probs = torch.softmax(torch.cat([scores, sinks[None, :, None, None].expand(2, 4, n, 1)], dim=-1), dim=-1)
        want = probs[..., :-1] @ vv
        args = fam_mod.with_sinks(q, k, v, mask, causal, sinks)
        q2, k2, v2, m2, c2 = args
        torch.testing.assert_close(F.scaled_dot_product_attention(q2, k2, v2, attn_mask=m2, is_causal=c2,
                                                                  scale=0.3, enable_gqa=True), want)
        torch.testing.assert_close(eager_attention(q2, k2, v2, m2, c2, 0.3), want)
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                               scale=0.3, enable_gqa=True)
        assert not torch.allclose(plain, want)  # the sink changes the output


def test_llama3_rope_scaling_comes_from_the_models_rotary_module():
    """Llama 3.x scales RoPE frequencies ("llama3": long wavelengths divided by `factor`); the runner takes cos
    and sin from the model's own rotary module, so the scaled frequencies are the ones it uses, and prompts far
    past original_max_position_embeddings (32 in the tiny config) still match generate."""
    from transformers import AutoModelForCausalLM

    model = _model("llama")
    plain_cfg = tiny_config("llama", VOCAB)
    plain_cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    plain = AutoModelForCausalLM.from_config(plain_cfg).model.rotary_emb
    scaled = model.model.rotary_emb.inv_freq
    assert model.model.rotary_emb.rope_type == "llama3"
    assert not torch.allclose(scaled, plain.inv_freq)  # the low frequencies are divided by the factor
    pos = torch.arange(100)
    h = torch.zeros(1, 100, 64)
    cos = fam_mod.rotary(fam_mod.family(model), model.model, h, pos)[None][0]
    ref_cos, _ = model.model.rotary_emb(h, pos[None])
    torch.testing.assert_close(cos[:, 0], ref_cos[0])
    prompts = _prompts(3, seed=6, lo=90, hi=120)
    outs = LLMEngine(model, EngineConfig(max_num_seqs=3, block_size=8, num_blocks=128, max_model_len=256)).generate(
        prompts, SamplingParams(max_tokens=10, ignore_eos=True))
    assert _identical(model, prompts, outs, 10) == len(prompts)


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral"])
def test_moe_routing_of_flattened_sequences_equals_each_alone(kind):
    """One engine step flattens many sequences' tokens into one batch for the MLP; the router picks each
    token's experts from that token alone, so the picks and the outputs are those of each sequence alone."""
    model = _model(kind)
    moe = model.model.layers[0].mlp
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(1, n, 64, generator=g) for n in (1, 7, 19)]
    together = torch.cat(parts, dim=1)
    with torch.no_grad():
        _, _, idx_all = moe.gate(together.view(-1, 64))
        idx_each = torch.cat([moe.gate(p.view(-1, 64))[2] for p in parts])
        out_all = fam_mod._mlp(model.model.layers[0], together)
        out_each = torch.cat([fam_mod._mlp(model.model.layers[0], p) for p in parts], dim=1)
    assert torch.equal(idx_all, idx_each)
    assert len(idx_all.unique()) > model.config.num_experts_per_tok  # the tokens use several experts
    torch.testing.assert_close(out_all, out_each, rtol=1e-5, atol=1e-6)


def test_qk_norm_and_fused_projections_are_applied():
    """Qwen3's per-head q/k norms and Phi-3's fused qkv_proj: families.qkv gives what the HF layout implies."""
    q3 = _model("qwen3").model.layers[0].self_attn
    x = torch.randn(1, 5, 64)
    q, k, _ = fam_mod.qkv(q3, x, 4, 2, 32)
    torch.testing.assert_close(q, q3.q_norm(q3.q_proj(x)[0].view(5, 4, 32)))
    torch.testing.assert_close(k, q3.k_norm(q3.k_proj(x)[0].view(5, 2, 32)))
    phi = _model("phi3").model.layers[0].self_attn
    q, k, v = fam_mod.qkv(phi, x, 4, 2, 16)
    fused = phi.qkv_proj(x)[0]
    torch.testing.assert_close(torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1), fused)


def test_unsupported_families_and_settings_are_refused_with_the_reason():
    from transformers import AutoModelForCausalLM, GPT2Config

    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert "'gpt2', whose attention it does not implement" in fam_mod.unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="gpt2"):
        LLMEngine(gpt2, EngineConfig(num_blocks=8))
    cfg = tiny_config("gemma3_text", VOCAB)
    cfg.attn_logit_softcapping = 50.0
    assert "soft-caps attention logits" in fam_mod.unsupported_reason(AutoModelForCausalLM.from_config(cfg))
    cfg = tiny_config("phi3", VOCAB)
    cfg.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                           "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}
    reason = fam_mod.unsupported_reason(AutoModelForCausalLM.from_config(cfg))
    assert "'longrope' RoPE scaling" in reason and "batching" in reason
