"""Model shapes: the published dimensions of real models (`ShapeSpec`, `SHAPES`), read from a config
(`spec_of_config`), and a MoE model's dense equivalent. labkit.core.models re-exports all of it; what builds
and loads models lives there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class ModelError(ValueError):
    """A model could not be loaded or built; the message names the fix."""


@dataclass(frozen=True)
class ShapeSpec:
    """Published dimensions of a real model (from its config.json on the Hugging Face Hub).

    A mixture-of-experts model (`num_experts` > 0) has `num_experts` SwiGLU experts of `moe_intermediate_size`
    in every layer and a router; each token runs `experts_per_token` of them, so its *active* parameters (what
    one token's forward reads and multiplies) are far fewer than the total (what memory holds)."""

    name: str
    model_type: str  # the transformers model_type: "llama", "qwen2", "qwen3", "qwen3_moe", "mistral", ...
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has biases on q, k, v
    head_size: int = 0  # head_dim when it is not hidden / heads (Qwen3, Gemma 3); 0: hidden / heads
    num_experts: int = 0  # 0: a dense MLP
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    qk_norm: bool = False  # an RMS norm on each head's q and k (Qwen3, Gemma 3)
    norms_per_layer: int = 2  # RMS norms of hidden size per layer (Gemma 3: 4)
    sliding_window: int | None = None
    o_bias: bool = False  # a bias on the output projection too (gpt-oss)
    sinks: bool = False  # one attention-sink logit per head (gpt-oss)
    moe_bias: bool = False  # biases on each expert's projections and on the router (gpt-oss)
    extra: tuple = ()  # other config.json fields, (key, value) pairs: rope scaling, Gemma's layer pattern

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_attention_heads

    def experts_read(self, tokens: int = 1) -> int:
        """Experts whose weights a forward over `tokens` tokens reads, per layer. Assumption: each token picks
        its top-k experts and different tokens pick different ones until all are used (an upper bound; at
        batch 1 decode it is exactly k). All of them for a dense model (its one MLP counts as 1)."""
        if not self.num_experts:
            return 1
        return min(self.num_experts, self.experts_per_token * max(1, int(tokens)))

    def norm_params(self) -> int:
        """Parameters of one layer's norms: kept 16-bit by quantized formats, no matmul FLOPs."""
        return self.norms_per_layer * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)

    def layer_params(self, experts: int | None = None) -> int:
        """Parameters of one decoder layer (attention + SwiGLU MLP or experts and router + norms), counting
        `experts` experts (default: all of them; `experts_per_token` gives the active parameters)."""
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attn = 2 * h * q + 2 * h * kv
        if self.attention_bias:
            attn += q + 2 * kv
        attn += (h if self.o_bias else 0) + (self.num_attention_heads if self.sinks else 0)
        if self.num_experts:
            n = self.num_experts if experts is None else experts
            mlp = n * 3 * h * self.moe_intermediate_size + h * self.num_experts
            if self.moe_bias:  # gate and up (2 x width), down (hidden) per expert; one per expert on the router
                mlp += n * (2 * self.moe_intermediate_size + h) + self.num_experts
        else:
            mlp = 3 * h * self.intermediate_size
        return attn + mlp + self.norm_params()

    def embedding_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        return emb if self.tie_word_embeddings else 2 * emb

    def params(self, layers: int | None = None, active: bool = False) -> int:
        """Total parameters with `layers` decoder layers (all of them by default); `active`: those one token
        uses (a MoE model's top-k experts per layer; the same as the total for a dense model)."""
        n = self.num_hidden_layers if layers is None else layers
        per_layer = self.layer_params(self.experts_per_token if active and self.num_experts else None)
        return self.embedding_params() + n * per_layer + self.hidden_size  # + final norm

    def active_params(self, layers: int | None = None) -> int:
        return self.params(layers, active=True)

    def kv_bytes_per_token(self, bytes_per_elem: float = 2, layers: int | None = None) -> float:
        """2 (K and V) x layers x KV heads x head dim x bytes."""
        n = self.num_hidden_layers if layers is None else layers
        return 2 * n * self.num_key_value_heads * self.head_dim * bytes_per_elem

    def to_dict(self) -> dict:
        return {**asdict(self), "head_dim": self.head_dim, "params": self.params(),
                "active_params": self.active_params(), "layer_params": self.layer_params()}


_GPT_OSS_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                 "original_max_position_embeddings": 4096}
_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
SHAPES: dict[str, ShapeSpec] = {s.name: s for s in [
    ShapeSpec("llama-2-7b", "llama", 4096, 11008, 32, 32, 32, 32000, 4096, 10000.0),
    ShapeSpec("llama-2-13b", "llama", 5120, 13824, 40, 40, 40, 32000, 4096, 10000.0),
    ShapeSpec("llama-3-8b", "llama", 4096, 14336, 32, 32, 8, 128256, 8192, 500000.0),
    ShapeSpec("tinyllama-1.1b", "llama", 2048, 5632, 22, 32, 4, 32000, 2048, 10000.0),
    ShapeSpec("qwen2.5-0.5b", "qwen2", 896, 4864, 24, 14, 2, 151936, 32768, 1000000.0,
              tie_word_embeddings=True, attention_bias=True),
    ShapeSpec("qwen2.5-32b", "qwen2", 5120, 27648, 64, 40, 8, 152064, 32768, 1000000.0, attention_bias=True),
    ShapeSpec("llama-2-70b", "llama", 8192, 28672, 80, 64, 8, 32000, 4096, 10000.0),
    # The current families, from each checkpoint's config.json on the Hugging Face Hub: meta-llama/Llama-3.1-8B,
    # Qwen/Qwen3-8B, Qwen/Qwen3-30B-A3B, mistralai/Mistral-7B-v0.1, mistralai/Mixtral-8x7B-v0.1, and the
    # text_config of google/gemma-3-12b-pt (its vision tower, ~0.4B, is not modelled).
    ShapeSpec("llama-3.1-8b", "llama", 4096, 14336, 32, 32, 8, 128256, 131072, 500000.0,
              extra=(("rope_scaling", _LLAMA31_ROPE),)),
    ShapeSpec("qwen3-8b", "qwen3", 4096, 12288, 36, 32, 8, 151936, 40960, 1000000.0, head_size=128, qk_norm=True),
    ShapeSpec("qwen3-30b-a3b", "qwen3_moe", 2048, 6144, 48, 32, 4, 151936, 40960, 1000000.0, head_size=128,
              qk_norm=True, num_experts=128, experts_per_token=8, moe_intermediate_size=768),
    ShapeSpec("mistral-7b", "mistral", 4096, 14336, 32, 32, 8, 32000, 32768, 10000.0, sliding_window=4096),
    ShapeSpec("mixtral-8x7b", "mixtral", 4096, 14336, 32, 32, 8, 32000, 32768, 1000000.0, num_experts=8,
              experts_per_token=2, moe_intermediate_size=14336),
    # HuggingFaceTB/SmolLM3-3B (NoPE on every 4th layer, the config's default) and openai/gpt-oss-20b (32 experts,
    # 4 per token, attention sinks, sliding/full layers alternating; published as MXFP4 experts, modelled here at
    # the dtype the course builds it in)
    ShapeSpec("smollm3-3b", "smollm3", 2048, 11008, 36, 16, 4, 128256, 65536, 5000000.0, tie_word_embeddings=True),
    ShapeSpec("gpt-oss-20b", "gpt_oss", 2880, 2880, 24, 64, 8, 201088, 131072, 150000.0, attention_bias=True,
              head_size=64, num_experts=32, experts_per_token=4, moe_intermediate_size=2880, sliding_window=128,
              o_bias=True, sinks=True, moe_bias=True, extra=(("rope_scaling", _GPT_OSS_ROPE),)),
    ShapeSpec("gemma-3-12b", "gemma3_text", 3840, 15360, 48, 16, 8, 262208, 131072, 1000000.0,
              tie_word_embeddings=True, head_size=256, qk_norm=True, norms_per_layer=4, sliding_window=1024,
              extra=(("query_pre_attn_scalar", 256), ("sliding_window_pattern", 6),
                     ("rope_local_base_freq", 10000.0), ("rope_scaling", {"rope_type": "linear", "factor": 8.0}))),
]}


def spec_of_config(config, name: str | None = None) -> ShapeSpec:
    """A model's dimensions from its config (a config.json as a dict, or a transformers config) as a ShapeSpec:
    what the floors of a learner's own model folder are computed from. Reads the fields each family names
    differently: a MoE's experts (Qwen3-MoE's `num_experts` and `moe_intermediate_size`, Mixtral's and gpt-oss's
    `num_local_experts`, whose experts are `intermediate_size` wide), an explicit `head_dim`, q/k norms (Qwen3,
    Gemma 3), Gemma 3's four norms per layer, gpt-oss's biases and sinks, and the text_config inside a multimodal
    config."""
    c = config if isinstance(config, dict) else config.to_dict()
    c = c.get("text_config") or c
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    if lost := [k for k in need if k not in c]:
        raise ModelError(f"the config lacks {lost}: the course's floors need a decoder-only transformer's dimensions")
    kind = c.get("model_type", "llama")
    heads = c["num_attention_heads"]
    head = c.get("head_dim") or 0
    rope = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    experts = c.get("num_experts") or c.get("num_local_experts") or 0
    moe = (c.get("moe_intermediate_size") or c["intermediate_size"]) if experts else 0
    window = c.get("sliding_window") if c.get("use_sliding_window", True) else None
    return ShapeSpec(name or str(c.get("_name_or_path") or kind), kind, c["hidden_size"], c["intermediate_size"],
                     c["num_hidden_layers"], heads, c.get("num_key_value_heads") or heads, c["vocab_size"],
                     c.get("max_position_embeddings", 2048), float(rope), bool(c.get("tie_word_embeddings", False)),
                     bool(c.get("attention_bias", kind == "qwen2")),
                     head_size=head if head and head != c["hidden_size"] // heads else 0,
                     num_experts=experts, experts_per_token=c.get("num_experts_per_tok", 0) if experts else 0,
                     moe_intermediate_size=moe, qk_norm=kind.startswith(("qwen3", "gemma3")),
                     norms_per_layer=4 if kind.startswith("gemma") else 2, sliding_window=window or None,
                     o_bias=kind == "gpt_oss" and bool(c.get("attention_bias", True)), sinks=kind == "gpt_oss",
                     moe_bias=kind == "gpt_oss")


def dense_equivalent(spec: ShapeSpec) -> ShapeSpec:
    """A dense model of the same total size as the mixture-of-experts `spec`: the same attention, vocabulary and
    depth, one SwiGLU MLP as wide as all experts together (intermediate = experts x expert width, the router's
    few parameters aside). What shows that a MoE decode reads its active bytes, not its total."""
    if not spec.num_experts:
        raise ModelError(f"{spec.name} is dense already: dense_equivalent takes a mixture-of-experts shape")
    from dataclasses import replace

    return replace(spec, name=f"{spec.name}-dense-equivalent", model_type="qwen3" if spec.qk_norm else "llama",
                   intermediate_size=spec.num_experts * spec.moe_intermediate_size, num_experts=0,
                   experts_per_token=0, moe_intermediate_size=0, sinks=False, moe_bias=False)
