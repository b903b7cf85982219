"""The KV cache: bytes per token, formula against a measured allocation, and an int8 cache's cost.

`kv_model` builds a small model with a real shape's attention layout (all a cache stores), `kv_measured` checks
the formula against a real prefill, `kv_context_table` projects the full models across contexts, and
`kv_quant_study` measures each cache kind's bytes and quality with text fed through the cache.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from labkit.core.models import shape
from labkit.core.units import GiB, MiB
from labkit.techniques import memory

if TYPE_CHECKING:
    import pandas as pd


# ---------------------------------------------------------------- the KV cache

def kv_model(shape_name: str, layers: int = 1, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A model whose attention has `shape_name`'s real KV layout (heads, KV heads, head dim: all a cache
    stores) around a small hidden size, MLP and vocabulary: its KV cache per layer is the real model's, and it
    builds in a moment (a 13B-wide layer takes seconds to initialize)."""
    from transformers import AutoModelForCausalLM

    from labkit.core.models import config_for

    spec = shape(shape_name)
    cfg = config_for(replace(spec, vocab_size=512, intermediate_size=64), layers)
    cfg.hidden_size, cfg.head_dim = 256, spec.head_dim  # q/k/v still project to heads x head_dim
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()


def kv_measured(shape_names: list[str], tokens: list[int], dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> pd.DataFrame:
    """The KV cache of a real prefill against the formula, per shape and length: bytes the cache's tensors
    hold after the prefill, bytes the allocator still had handed out at its end (the allocation), and
    `ShapeSpec.kv_bytes_per_token` for the one layer built; `full_model_MiB` scales the measured bytes to
    every layer."""
    import pandas as pd
    from transformers import DynamicCache

    from labkit.core.models import prompt_ids

    rows = []
    for name in shape_names:
        spec = shape(name)
        m = kv_model(name, 1, dtype, seed)
        for n in tokens:
            ids = prompt_ids(n, vocab_size=512, seed=seed)
            cache = DynamicCache(config=m.config)

            def fn(m=m, ids=ids, cache=cache):
                out = m(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                del out  # keep only what the cache holds

            with torch.inference_mode():
                _, peak = memory.peak_during(fn)
            held = memory.cache_bytes(cache)
            formula = spec.kv_bytes_per_token(torch.empty((), dtype=dtype).itemsize, layers=1) * n
            rows.append({"shape": name, "kv_heads": spec.num_key_value_heads, "heads": spec.num_attention_heads,
                         "head_dim": spec.head_dim, "tokens": n, "formula_bytes": int(formula),
                         "cache_bytes": held, "allocated_bytes": peak.net, "measured/formula": held / formula,
                         "bytes_per_token_layer": held / n,
                         "full_model_MiB": held * spec.num_hidden_layers / MiB})
            del cache
        del m
    return pd.DataFrame(rows)


def kv_context_table(shape_names: list[str], contexts: list[int], dtype: str = "bf16") -> pd.DataFrame:
    """KV cache of the full models at each context (formula: roofline.kv_cache_bytes), next to the weights."""
    import pandas as pd

    from labkit.core.roofline import kv_cache_bytes, weight_bytes

    rows = []
    for name in shape_names:
        spec = shape(name)
        for c in contexts:
            kv = kv_cache_bytes(spec, dtype, c)
            rows.append({"shape": name, "context": c, "kv_GiB": kv / GiB,
                         "weights_GiB": weight_bytes(spec, dtype) / GiB,
                         "kv_share": kv / (kv + weight_bytes(spec, dtype))})
    return pd.DataFrame(rows)


@torch.inference_mode()
def _chunked_eval(model, ids: torch.Tensor, cache, chunk: int) -> tuple[float, torch.Tensor]:
    """Sum of NLL over ids[1:] with the text fed `chunk` tokens at a time through `cache`: every token after
    the first chunk attends to keys and values read back from the cache. Returns (nll sum, argmax per pos)."""
    nll, preds = 0.0, []
    n = ids.shape[1]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        logits = model(input_ids=ids[:, s:e], past_key_values=cache, use_cache=True).logits.float()[0]
        preds.append(logits.argmax(-1))
        tgt = ids[0, s + 1 : e + 1]
        lp = torch.log_softmax(logits[: tgt.numel()], dim=-1)
        nll += float(-lp.gather(1, tgt[:, None]).sum())
    return nll, torch.cat(preds)[: n - 1]


def kv_quant_study(model, tokenizer, kinds: list[str], window: int = 1024, windows: int = 2, chunk: int = 64,
                   progress: bool = True) -> pd.DataFrame:
    """Each KV cache kind on the trained model: the bytes it holds after a window of `window` tokens, and the
    quality of next-token prediction when held-out text (`windows` seeded windows of data/eval/heldout.txt) is
    fed `chunk` tokens at a time, so attention reads the stored (quantized) keys and values: perplexity and the
    share of positions whose top token matches the first kind's (list the full-precision cache first)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from labkit.core.models import prompt_ids

    ids = prompt_ids(window, batch=windows, tokenizer=tokenizer, seed=0)
    reasons = memory.kv_cache_kinds()
    ref_preds, rows = None, []
    for kind in tqdm(kinds, desc="KV caches", disable=not progress):
        if reasons.get(kind):
            rows.append({"cache": kind, "status": f"skipped: {reasons[kind]}"})
            continue
        nll, count, preds, held = 0.0, 0, [], None
        for w in range(windows):
            cache = memory.make_cache(kind, model)
            s, p = _chunked_eval(model, ids[w : w + 1], cache, chunk)
            nll, count = nll + s, count + window - 1
            preds.append(p)
            held = held or memory.cache_bytes(cache)
        preds = torch.cat(preds)
        ref_preds = preds if ref_preds is None else ref_preds
        rows.append({"cache": kind, "status": "ok", "bytes_held": held, "bytes_per_token": held / window,
                     "perplexity": math.exp(nll / count), "top1_agreement": float((preds == ref_preds).float().mean())})
    df = pd.DataFrame(rows)
    if not df.empty and "bytes_held" in df:
        base = df["bytes_held"].iloc[0]
        df["bytes_vs_fp"] = df["bytes_held"] / base
        df["ppl_vs_fp"] = df["perplexity"] / df["perplexity"].iloc[0]
    return df
