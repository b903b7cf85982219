"""The model runner: one forward pass over every token the scheduler picked, with a paged KV cache.

It reuses the Hugging Face model's own modules (embedding, norms, q/k/v/o projections, MLP, rotary embedding,
head), so a model quantized or otherwise rewritten by another lesson plugs in unchanged; only attention is
ours: keys and values live in a preallocated cache of fixed-size blocks, written at the slots the scheduler
assigned and read back through each sequence's block table. All sequences of a step are flattened into one
token dimension for the matmuls (the expensive part). Attention runs once per layer for all decoding sequences
together (their blocks gathered by block table into one padded batch, with a mask of each one's real keys) and
once per prefilling sequence, with PyTorch's fused `scaled_dot_product_attention` (SDPA: flash /
memory-efficient kernels where the device has them) or, with `attention="eager"`, spelled out as matmul,
softmax, matmul the way Hugging Face's "eager" attention does (the case study measures what the fused kernel is
worth).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.profiler import record_function

from labkit.serve import families
from labkit.serve.config import ATTENTION
from labkit.serve.families import SUPPORTED, unsupported_reason  # noqa: F401
from labkit.serve.scheduler import SchedulerOutput
from labkit.techniques.kernels import eager_attention

# The families it runs and what differs between them (q/k norms, fused projections, sliding windows, Gemma's
# norms): labkit.serve.families; SUPPORTED and unsupported_reason stay importable from here.


class ModelRunner:
    """Owns the KV cache tensors: [layers, num_blocks * block_size, kv_heads, head_dim] for K and for V."""

    def __init__(self, model, num_blocks: int, block_size: int, seed: int = 0, attention: str = "sdpa"):
        if attention not in ATTENTION:
            raise ValueError(f"unknown attention {attention!r}; choose one of {list(ATTENTION)}")
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(reason)
        cfg = model.config
        self.attention = attention
        self.model = model.eval()
        self.family = families.family(model)
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
        self._buffers: list[torch.Tensor | None] = [None, None]  # gathered K and V of the decode batch

    @staticmethod
    def kv_bytes_per_block(model, block_size: int, dtype: torch.dtype | None = None) -> int:
        """Bytes of K and V for one block across all layers: what sizes the cache from a memory budget."""
        reason = unsupported_reason(model)  # before reading dimensions another family may name differently
        if reason:
            raise ValueError(reason)
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        elt = (dtype or model.get_input_embeddings().weight.dtype).itemsize
        return 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * head_dim * elt

    def _context_slots(self, block_table: list[int], length: int) -> torch.Tensor:
        bt = torch.tensor(block_table, device=self.device)
        slots = (bt[:, None] * self.block_size + torch.arange(self.block_size, device=self.device)).flatten()
        return slots[:length]

    def _attend(self, q, k, v, mask, causal: bool, scale: float, sinks: torch.Tensor | None = None) -> torch.Tensor:
        if sinks is not None:  # gpt-oss: a zero key per sequence whose score is the head's sink logit
            q, k, v, mask, causal = families.with_sinks(q, k, v, mask, causal, sinks)
        if self.attention == "eager":
            return eager_attention(q, k, v, mask, causal, scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=True)

    def _decode_batch(self, work, offsets: list[int]):
        """The step's decode sequences (one new token each), gathered for one attention call per layer: their
        token rows, their block tables padded into one tensor, and a mask of each one's real keys."""
        rows = [i for i, w in enumerate(work) if w.num_new_tokens == 1]
        if not rows:
            return None
        width = max(-(-work[i].end // self.block_size) for i in rows)
        tables = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            bt = work[i].block_table[: width]
            tables[r, : len(bt)] = torch.tensor(bt)
        ends = torch.tensor([work[i].end for i in rows])
        kpos = torch.arange(width * self.block_size)[None, :]
        masks = {}  # per sliding window (None: full): each one's real keys, the window's newest only
        for win in set(self.family.windows):
            m = kpos < ends[:, None]
            masks[win] = (m if win is None else m & (kpos >= ends[:, None] - win))[:, None, None, :].to(self.device)
        return (torch.tensor([offsets[i] for i in rows], device=self.device), tables.flatten().to(self.device),
                masks)

    def _gather(self, cache: torch.Tensor, tables: torch.Tensor, batch: int, dtype, which: int) -> torch.Tensor:
        """[batch, kv_heads, width * block_size, head_dim]: whole blocks copied by block table into a buffer kept
        between steps (a fresh tensor of this size every step costs as much again in page faults)."""
        n = tables.numel()
        buf = self._buffers[which]
        if buf is None or buf.shape[0] < n:
            buf = self._buffers[which] = torch.empty(max(n, 2 * (0 if buf is None else buf.shape[0])),
                                                     self.block_size, self.num_kv_heads, self.head_dim,
                                                     dtype=cache.dtype, device=cache.device)
        blocks = torch.index_select(cache.view(-1, self.block_size, self.num_kv_heads, self.head_dim), 0, tables,
                                    out=buf[:n])
        return blocks.view(batch, -1, self.num_kv_heads, self.head_dim).transpose(1, 2).to(dtype)

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> list[int | None]:
        """Compute this step's tokens and return one next-token id per scheduled sequence (None for a prefill
        chunk that does not reach the end of its sequence: it has no next token yet). The matmuls run on
        every token of the step at once; attention runs once per layer for all decode sequences together, and
        once per prefill (or recompute) sequence."""
        work = out.scheduled
        ids = torch.tensor([t for w in work for t in w.token_ids], device=self.device)
        pos = torch.tensor([p for w in work for p in w.positions], device=self.device)
        slots = torch.tensor([s for w in work for s in w.slot_mapping], device=self.device)
        offsets = [0]
        for w in work:
            offsets.append(offsets[-1] + w.num_new_tokens)
        decode = self._decode_batch(work, offsets)
        prefill = [(i, self._context_slots(w.block_table, w.end)) for i, w in enumerate(work) if w.num_new_tokens > 1]
        base = self.model.model
        h = base.embed_tokens(ids[None])  # [1, T, hidden]
        rope = families.rotary(self.family, base, h, pos)  # cos, sin [T, 1, rotary dim] per rotary table
        q_scale = families.query_scale(self.family, pos)  # Ministral 3's per-position query scale, or None
        rope_on = self.family.rope_on or (True,) * len(base.layers)
        T = ids.numel()
        for li, layer in enumerate(base.layers):  # record_function marks what a step profile sorts time into
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            with record_function("labkit::linears"):
                q, k, v = families.qkv(attn, x, self.num_heads, self.num_kv_heads, self.head_dim)
            if rope_on[li]:  # SmolLM3's NoPE layers skip it
                cos, sin = rope[self.family.rope_keys[li]]
                q, k = families.apply_rope(q, cos, sin), families.apply_rope(k, cos, sin)
            if q_scale is not None:
                q = q * q_scale.to(q.dtype)
            with record_function("labkit::kv_write"):
                self.k_cache[li, slots] = k.to(self.dtype)
                self.v_cache[li, slots] = v.to(self.dtype)
            with record_function("labkit::attention"):
                o = self._attention_layer(li, q, work, offsets, decode, prefill, attn.scaling, T,
                                          attn.sinks if self.family.sinks else None)
            with record_function("labkit::linears"):
                h = families.finish_layer(layer, h, attn.o_proj(o.reshape(1, T, self.num_heads * self.head_dim)))
        self._prompt_logprobs(work, offsets, h[0])
        done = [i for i, w in enumerate(work) if w.end == w.seq.num_tokens]  # a prefill chunk yields no token
        if not done:
            return [None] * len(work)
        last = torch.tensor([offsets[i + 1] - 1 for i in done], device=self.device)
        with record_function("labkit::linears"):
            logits = families.logits(self.model, self.family, h[0, last])  # [finishing sequences, vocab]
        tokens: list[int | None] = [None] * len(work)
        with record_function("labkit::sample"):
            picked = self._sample(logits, [work[i].seq.sampling_params.temperature for i in done])
        for i, t in zip(done, picked, strict=True):
            tokens[i] = t
        return tokens

    def _prompt_logprobs(self, work, offsets: list[int], h: torch.Tensor) -> None:
        """For requests that asked for them, log p(prompt token j+1 | tokens <= j) at every prompt position j this
        step computed, from the hidden states of this very step (the batch the request was served in)."""
        for i, w in enumerate(work):
            seq = w.seq
            last = min(w.end, seq.num_prompt_tokens - 1)  # positions j < last have a prompt token after them
            if seq.prompt_logprobs is None or w.start >= last:
                continue
            rows = h[offsets[i] : offsets[i] + last - w.start]
            with record_function("labkit::linears"):
                lp = torch.log_softmax(families.logits(self.model, self.family, rows), dim=-1)
            tgt = torch.tensor(seq.prompt_token_ids[w.start + 1 : last + 1], device=lp.device)
            seq.prompt_logprobs[w.start + 1 : last + 1] = lp.gather(1, tgt[:, None])[:, 0].tolist()

    def _attention_layer(self, li: int, q: torch.Tensor, work, offsets: list[int], decode, prefill, scale: float,
                         T: int, sinks: torch.Tensor | None = None) -> torch.Tensor:
        """Layer `li`'s attention output [T, heads, head_dim] for every token of the step: all decode sequences in
        one call against their padded contexts, each prefill (or chunk of one) on its own."""
        o = torch.empty(T, self.num_heads, self.head_dim, dtype=q.dtype, device=self.device)
        if decode is not None:  # [B, heads, 1, d] against [B, kv_heads, padded context, d]
            rows, tables, masks = decode
            mask = masks[self.family.windows[li]]
            ks = self._gather(self.k_cache[li], tables, rows.numel(), q.dtype, 0)
            vs = self._gather(self.v_cache[li], tables, rows.numel(), q.dtype, 1)
            o[rows] = self._attend(q[rows][:, :, None], ks, vs, mask, False, scale, sinks)[:, :, 0]
        for i, c in prefill:
            w, off = work[i], offsets[i]
            n = w.num_new_tokens
            qs = q[off : off + n].transpose(0, 1)[None]  # [1, heads, n, head_dim]
            ks = self.k_cache[li, c].transpose(0, 1)[None].to(q.dtype)  # [1, kv_heads, end, head_dim]
            vs = self.v_cache[li, c].transpose(0, 1)[None].to(q.dtype)
            window = self.family.windows[li]
            if w.start == 0 and (window is None or window >= w.end):  # a full prefill (or a recompute): causal
                mask_p, causal = None, True
            else:  # after a cached prefix (or earlier chunks), or a sliding window: query i sees keys up to
                kpos = torch.arange(w.end, device=self.device)  # start + i, the window's newest only
                qpos = w.start + torch.arange(n, device=self.device)
                mask_p, causal = families.visible(qpos, kpos, window), False
            o[off : off + n] = self._attend(qs, ks, vs, mask_p, causal, scale, sinks)[0].transpose(0, 1)
        return o

    def _sample(self, logits: torch.Tensor, temperatures: list[float]) -> list[int]:
        out = logits.argmax(-1)
        for i, t in enumerate(temperatures):
            if t > 0:
                probs = torch.softmax(logits[i] / t, dim=-1)
                out[i] = torch.multinomial(probs, 1, generator=self.generator)[0]
        return out.tolist()
