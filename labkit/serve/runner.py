"""The model runner: one forward pass over every token the scheduler picked, with a paged KV cache.

It reuses the Hugging Face model's own modules (embedding, norms, q/k/v/o projections, MLP, rotary embedding,
head), so a model quantized or otherwise rewritten by another lesson plugs in unchanged; only attention is
ours: keys and values live in a preallocated cache of fixed-size blocks, written at the slots the scheduler
assigned and read back through each sequence's block table. All sequences of a step are flattened into one
token dimension for the matmuls (the expensive part); attention runs per sequence, with PyTorch's fused
`scaled_dot_product_attention` (SDPA: flash / memory-efficient kernels where the device has them) or, with
`attention="eager"`, spelled out as matmul, softmax, matmul the way Hugging Face's "eager" attention does (the
case study measures what the fused kernel is worth).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from labkit.kernels import eager_attention
from labkit.serve.scheduler import SchedulerOutput

ATTENTION = ("sdpa", "eager")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class ModelRunner:
    """Owns the KV cache tensors: [layers, num_blocks * block_size, kv_heads, head_dim] for K and for V."""

    def __init__(self, model, num_blocks: int, block_size: int, seed: int = 0, attention: str = "sdpa"):
        if attention not in ATTENTION:
            raise ValueError(f"unknown attention {attention!r}; choose one of {list(ATTENTION)}")
        cfg = model.config
        self.attention = attention
        self.model = model.eval()
        self.block_size = block_size
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        emb = model.get_input_embeddings().weight
        self.device, self.dtype = emb.device, emb.dtype
        shape = (cfg.num_hidden_layers, num_blocks * block_size, self.num_kv_heads, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @staticmethod
    def kv_bytes_per_block(model, block_size: int, dtype: torch.dtype | None = None) -> int:
        """Bytes of K and V for one block across all layers: what sizes the cache from a memory budget."""
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        elt = (dtype or model.get_input_embeddings().weight.dtype).itemsize
        return 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * head_dim * elt

    def _context_slots(self, block_table: list[int], length: int) -> torch.Tensor:
        bt = torch.tensor(block_table, device=self.device)
        slots = (bt[:, None] * self.block_size + torch.arange(self.block_size, device=self.device)).flatten()
        return slots[:length]

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> list[int]:
        """Compute this step's tokens and return one next-token id per scheduled sequence."""
        work = out.scheduled
        ids = torch.tensor([t for w in work for t in w.token_ids], device=self.device)
        pos = torch.tensor([p for w in work for p in w.positions], device=self.device)
        slots = torch.tensor([s for w in work for s in w.slot_mapping], device=self.device)
        ctx = [self._context_slots(w.block_table, w.end) for w in work]
        base = self.model.model
        h = base.embed_tokens(ids[None])  # [1, T, hidden]
        cos, sin = base.rotary_emb(h, pos[None])  # [1, T, head_dim]
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # broadcast over heads
        T = ids.numel()
        for li, layer in enumerate(base.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(T, self.num_heads, self.head_dim)
            k = attn.k_proj(x).view(T, self.num_kv_heads, self.head_dim)
            v = attn.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k_cache[li, slots] = k.to(self.dtype)
            self.v_cache[li, slots] = v.to(self.dtype)
            o = torch.empty(T, self.num_heads, self.head_dim, dtype=q.dtype, device=self.device)
            off = 0
            for w, c in zip(work, ctx, strict=True):
                n = w.num_new_tokens
                qs = q[off : off + n].transpose(0, 1)[None]  # [1, heads, n, head_dim]
                ks = self.k_cache[li, c].transpose(0, 1)[None].to(q.dtype)  # [1, kv_heads, end, head_dim]
                vs = self.v_cache[li, c].transpose(0, 1)[None].to(q.dtype)
                if n == 1:  # decode: the new token sees the whole context
                    mask, causal = None, False
                elif w.start == 0:  # a full prefill (or a recompute): plain causal attention
                    mask, causal = None, True
                else:  # new tokens after a cached prefix: query i sees keys up to start + i
                    kpos = torch.arange(w.end, device=self.device)
                    mask, causal = kpos[None, :] <= (w.start + torch.arange(n, device=self.device))[:, None], False
                if self.attention == "eager":
                    r = eager_attention(qs, ks, vs, mask, causal, attn.scaling)
                else:
                    r = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=causal,
                                                       scale=attn.scaling, enable_gqa=True)
                o[off : off + n] = r[0].transpose(0, 1)
                off += n
            h = h + attn.o_proj(o.reshape(1, T, self.num_heads * self.head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        last = torch.tensor([0] + [w.num_new_tokens for w in work], device=self.device).cumsum(0)[1:] - 1
        logits = self.model.lm_head(base.norm(h[0, last])).float()  # [num_seqs, vocab]
        return self._sample(logits, [w.seq.sampling_params.temperature for w in work])

    def _sample(self, logits: torch.Tensor, temperatures: list[float]) -> list[int]:
        out = logits.argmax(-1)
        for i, t in enumerate(temperatures):
            if t > 0:
                probs = torch.softmax(logits[i] / t, dim=-1)
                out[i] = torch.multinomial(probs, 1, generator=self.generator)[0]
        return out.tolist()
