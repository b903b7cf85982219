"""What differs between model families in the few places labkit's runner computes itself.

The runner (labkit.serve.runner) reuses each Hugging Face model's own modules and owns only attention over the
paged KV cache, so everything a family does differently around attention has to be spelled out here, read
from transformers' modeling code of that family (transformers 5.x): a fused q/k/v projection (Phi-3), RMS norms
on each head's q and k before RoPE (Qwen3, Gemma 3), a rotary embedding per layer type and partial rotary
(Gemma 3, Phi-3), sliding-window attention on every layer (Mistral, Mixtral, Phi-3 when configured) or on some
(Gemma 3, gpt-oss, SmolLM3 and Qwen2/Qwen3 with use_sliding_window), layers without RoPE (SmolLM3's NoPE layers),
queries scaled by position past the original context (Ministral 3's Llama-4 attention scale), gpt-oss's rotary
tables of half a head and its attention sinks (a learned logit per head that joins every softmax), Gemma's norms
around each sublayer's output and final logit softcapping, and a mixture-of-experts MLP whose module may return a
tuple. A family not in `SUPPORTED`, or a configuration of one that the runner cannot reproduce token for token, is
refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# model_type -> where its sliding window lives: "module" (the attention module's own `sliding_window`, set per
# layer from config.layer_types), "config" (config.sliding_window on every layer, None: full), None (no window).
SUPPORTED = {"llama": None, "qwen2": "module", "qwen3": "module", "qwen3_moe": "module", "mixtral": "config",
             "mistral": "config", "phi3": "config", "gemma3_text": "module", "smollm3": "module",
             "ministral3": "config", "gpt_oss": "module"}
# RoPE variants whose frequencies depend on the longest position in the forward pass: one step of the engine
# holds several sequences, so their cos/sin would depend on the batch, unlike generate on one sequence.
BATCH_DEPENDENT_ROPE = ("dynamic", "longrope")


@dataclass(frozen=True)
class Family:
    """A model's per-layer attention details, read once when the runner is built."""

    kind: str
    windows: tuple[int | None, ...]  # per layer: keys older than this many positions are masked (None: all)
    rope_keys: tuple[str | None, ...]  # per layer: which rotary table it uses (Gemma 3: one per layer type)
    final_softcap: float | None = None
    rope_on: tuple[bool, ...] = ()  # per layer: False for a layer without RoPE (SmolLM3); () means all have it
    half_rope: bool = False  # gpt-oss: cos/sin cover half a head and rotate its two halves (doubled here)
    q_scale: tuple[float, int] | None = None  # Ministral 3: (beta, original context) of the Llama-4 query scale
    sinks: bool = False  # gpt-oss: each attention module's `sinks`, one logit per head, joins the softmax


def _rope_types(cfg) -> list[str]:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    nested = [v for v in params.values() if isinstance(v, dict)]  # Gemma 3: one dict per layer type
    return [str(p.get("rope_type", p.get("type", "default"))) for p in (nested or [params])]


def unsupported_reason(model) -> str | None:
    """Why labkit's runner cannot run `model` token-exactly, or None. The runner reimplements attention around
    the Hugging Face modules, so a family (or a setting of one) whose attention it does not reproduce would
    give wrong tokens silently: refuse it, naming what is missing."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", type(model).__name__)
    families = f"labkit's engine runs the {', '.join(SUPPORTED)} families"
    if kind not in SUPPORTED:
        hint = " (load the text-only model, Gemma3ForCausalLM)" if kind == "gemma3" else ""
        return f"{families}; this model is {kind!r}, whose attention it does not implement{hint}"
    layers = list(getattr(getattr(model, "model", None), "layers", []))
    if not layers:
        return f"{families}; this model has no decoder layers at model.model.layers"
    attn = layers[0].self_attn
    has_qkv = hasattr(attn, "qkv_proj") or all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj"))
    if not (has_qkv and hasattr(attn, "o_proj") and hasattr(attn, "scaling")):
        return f"{families}; this {kind} model's attention has another layout (no q/k/v and o projections)"
    if getattr(cfg, "attn_logit_softcapping", None):
        return f"this {kind} model soft-caps attention logits, which the fused attention kernels cannot do"
    if getattr(cfg, "use_bidirectional_attention", False):
        return f"this {kind} model uses bidirectional attention; the engine decodes causally"
    bad = [t for t in _rope_types(cfg) if t in BATCH_DEPENDENT_ROPE]
    if bad:
        return (f"this {kind} model uses {bad[0]!r} RoPE scaling, whose frequencies depend on the longest sequence "
                "in a forward pass: batching several sequences in one step would change their tokens")
    return None


def family(model) -> Family:
    """The per-layer details of a supported `model` (check `unsupported_reason` first)."""
    cfg = model.config
    layers = model.model.layers
    where = SUPPORTED[cfg.model_type]
    if where == "module":
        windows = tuple(getattr(layer.self_attn, "sliding_window", None) for layer in layers)
    elif where == "config":
        windows = (getattr(cfg, "sliding_window", None),) * len(layers)
    else:
        windows = (None,) * len(layers)
    per_type = cfg.model_type == "gemma3_text"
    keys = tuple(cfg.layer_types[i] if per_type else None for i in range(len(layers)))
    rope_on = tuple(bool(getattr(layer.self_attn, "use_rope", True)) for layer in layers)
    q_scale = None
    if cfg.model_type == "ministral3":
        params = cfg.rope_parameters
        q_scale = (float(params["llama_4_scaling_beta"]), int(params["original_max_position_embeddings"]))
    return Family(cfg.model_type, windows, keys, getattr(cfg, "final_logit_softcapping", None), rope_on=rope_on,
                  half_rope=cfg.model_type == "gpt_oss", q_scale=q_scale, sinks=cfg.model_type == "gpt_oss")


def rotary(fam: Family, base, h: torch.Tensor, pos: torch.Tensor) -> dict:
    """cos and sin for every token of the step, [T, 1, rotary dim] each, per rotary table the layers use."""
    out = {}
    for key in dict.fromkeys(fam.rope_keys):
        cos, sin = base.rotary_emb(h, pos[None]) if key is None else base.rotary_emb(h, pos[None], key)
        if fam.half_rope:  # x1 c - x2 s, x2 c + x1 s: rotate_half's form with the table repeated for both halves
            cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        out[key] = cos[0, :, None, :], sin[0, :, None, :]
    return out


def query_scale(fam: Family, pos: torch.Tensor) -> torch.Tensor | None:
    """Ministral 3's per-position query scale, [T, 1, 1] (None for the other families): 1 + beta * log(1 +
    floor(position / original context)), so it is 1 inside the original context and grows past it."""
    if fam.q_scale is None:
        return None
    beta, original = fam.q_scale
    return (1 + beta * torch.log(1 + torch.floor(pos / original)))[:, None, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first cos.shape[-1] dimensions of each head (all of them unless the rotary is partial)."""
    d = cos.shape[-1]
    if d == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    rot, rest = x[..., :d], x[..., d:]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


def qkv(attn, x: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    """q [T, heads, head_dim], k and v [T, kv_heads, head_dim] from the normed hidden states x [1, T, hidden]:
    one fused projection split as Phi-3 lays it out (q, then k, then v) or three; then the per-head RMS norms on
    q and k where the family has them (Qwen3, Gemma 3), before RoPE as in their modeling code."""
    T = x.shape[1]
    if hasattr(attn, "qkv_proj"):
        q, k, v = attn.qkv_proj(x)[0].split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    else:
        q, k, v = attn.q_proj(x)[0], attn.k_proj(x)[0], attn.v_proj(x)[0]
    q, k, v = q.view(T, heads, head_dim), k.view(T, kv_heads, head_dim), v.view(T, kv_heads, head_dim)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


def _mlp(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's MLP, dense or mixture-of-experts (the HF module routes each token on its own, so flattening
    several sequences into one step routes every token as alone); older MoE blocks return (out, router_logits)."""
    mlp = getattr(layer, "mlp", None) or layer.block_sparse_moe
    out = mlp(x)
    return out[0] if isinstance(out, tuple) else out


def finish_layer(layer, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The residual stream after the layer, given its attention output (o_proj applied): Gemma normalises each
    sublayer's output before adding it (post_attention / pre- and post-feedforward norms); the others add the
    attention output, then the MLP of the post-attention-normed stream. Dropouts are off in eval mode."""
    if hasattr(layer, "pre_feedforward_layernorm"):
        h = h + layer.post_attention_layernorm(attn_out)
        return h + layer.post_feedforward_layernorm(_mlp(layer, layer.pre_feedforward_layernorm(h)))
    h = h + attn_out
    return h + _mlp(layer, layer.post_attention_layernorm(h))


def logits(model, fam: Family, h: torch.Tensor) -> torch.Tensor:
    """fp32 logits of hidden states h [N, hidden]: final norm, head, then Gemma's tanh softcap if configured."""
    out = model.lm_head(model.model.norm(h)).float()
    if fam.final_softcap:
        out = torch.tanh(out / fam.final_softcap) * fam.final_softcap
    return out


def with_sinks(q, k, v, mask, causal: bool, sinks: torch.Tensor):
    """gpt-oss's attention sinks through an ordinary attention call: one extra key and value of zeros per
    sequence, whose score is forced to the head's sink logit by a float mask (q . 0 + sink). The softmax then
    spreads over the real keys and the sink, and the sink adds nothing to the output: exactly the modeling code's
    softmax over [scores, sink] with the sink's column dropped. Returns q, k, v, mask, causal for the call."""
    b, heads, n, _ = q.shape
    end = k.shape[2]
    if causal:  # query i (of the last n positions) sees keys up to end - n + i
        kpos = torch.arange(end, device=q.device)
        mask = visible(kpos[end - n:], kpos, None)
    elif mask is None:
        mask = torch.ones(n, end, dtype=torch.bool, device=q.device)
    mask = mask.expand(b, heads, n, end)  # [n, end] of a prefill or [b, 1, 1, end] of the decode batch
    add = torch.zeros(b, heads, n, end + 1, dtype=q.dtype, device=q.device)
    add[..., :end].masked_fill_(~mask, float("-inf"))
    add[..., end] = sinks.to(q.dtype)[None, :, None]
    zero = k.new_zeros(k.shape[0], k.shape[1], 1, k.shape[3])
    return q, torch.cat((k, zero), dim=2), torch.cat((v, zero), dim=2), add, False


def visible(qpos: torch.Tensor, kpos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[queries, keys] bool: key positions a query at each position may attend, causal and within `window`
    (transformers' sliding mask: kv > q - window, so a query sees itself and the window - 1 keys before it)."""
    ok = kpos[None, :] <= qpos[:, None]
    if window is not None:
        ok &= kpos[None, :] > qpos[:, None] - window
    return ok
