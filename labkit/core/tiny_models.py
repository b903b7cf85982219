"""Tiny seeded random models of every family the engine runs: 2 layers, hidden 64, a few heads, a small
vocabulary. Why: a family's attention details (q/k norms, fused projections, sliding windows, MoE routing,
Gemma's norms) are tested token for token against `model.generate` in seconds on a CPU, and a learner can try
the engine or the bring-your-own-model path offline. Each config turns the family's distinctive feature ON
(Llama's "llama3" RoPE scaling, a sliding window shorter than the test prompts, partial rotary, softcapping,
SmolLM3's NoPE layer, Ministral 3's query scale past an original context shorter than the prompts, gpt-oss's
sinks and alternating windows), so a test passes only if the runner reproduces it.
"""

from __future__ import annotations

import torch

FAMILIES = ("llama", "qwen2", "qwen3", "qwen3_moe", "mixtral", "mistral", "phi3", "gemma3_text", "smollm3",
            "ministral3", "gpt_oss")
WINDOW = 16  # sliding window of the windowed tiny configs: shorter than the test prompts, so it masks keys


def tiny_config(kind: str, vocab_size: int = 256):
    """The transformers config of a tiny `kind` model (one of FAMILIES)."""
    from transformers import AutoConfig

    if kind not in FAMILIES:
        raise ValueError(f"unknown family {kind!r}; choose one of {list(FAMILIES)}")
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                  initializer_range=0.1)  # wider than the default 0.02: decisive logits, no near-ties
    extra = {
        "llama": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 32}),
        "qwen2": dict(),
        "qwen3": dict(head_dim=32),  # not hidden / heads: the runner must read head_dim
        "qwen3_moe": dict(head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                          norm_topk_prob=True, decoder_sparse_step=1),
        "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
        "mistral": dict(sliding_window=WINDOW),
        "phi3": dict(sliding_window=WINDOW, partial_rotary_factor=0.5, original_max_position_embeddings=512),
        "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                            layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=30.0,
                            tie_word_embeddings=True),
        "smollm3": dict(no_rope_layers=[1, 0], use_sliding_window=False),  # layer 1 is a NoPE layer
        # YaRN over an original context of 32 positions, and the Llama-4 query scale that grows past it
        "ministral3": dict(head_dim=16, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 16.0, "original_max_position_embeddings": 32,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0, "llama_4_scaling_beta": 0.1}),
        "gpt_oss": dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
                        layer_types=["sliding_attention", "full_attention"], rope_parameters={
                            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 16.0, "beta_fast": 32.0,
                            "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 32}),
    }[kind]
    return AutoConfig.for_model(kind, **{**common, **extra})


def tiny_model(kind: str, seed: int = 0, vocab_size: int = 256, attn_implementation: str = "sdpa"):
    """A tiny `kind` model with seeded random weights (as transformers initialises them), fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    from labkit.core.models import attention_for

    cfg = tiny_config(kind, vocab_size)
    torch.manual_seed(seed)  # gpt-oss has no SDPA path in transformers: its reference runs eager
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attention_for(cfg, attn_implementation))
    return model.eval()

