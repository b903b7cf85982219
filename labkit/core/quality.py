"""Quality metrics that every speed-up is paired with: held-out perplexity and greedy-token agreement.

Both are deterministic: fixed text, fixed windows, greedy decoding, no sampling.
"""

from __future__ import annotations

import math

import torch


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def perplexity(model, tokenizer, text: str, window: int = 512, stride: int = 256,
               max_tokens: int | None = None) -> dict:
    """Perplexity with strided windows (as Hugging Face's guide does it): each window of `window` tokens
    starts `stride` after the previous one and scores only the tokens the previous window did not, so each
    token is scored once with at least `window - stride` tokens of context (except at the very start).

    `max_tokens` caps how many tokens of `text` are used (the preset sets it), always from the start.
    """
    ids = text_ids(tokenizer, text, max_tokens)
    dev = _device_of(model)
    nlls = []
    for begin, end, first in windows(ids.numel(), window, stride):
        logits = model(input_ids=ids[begin:end].unsqueeze(0).to(dev)).logits.float()[0]
        # token at position t is predicted by logits at t-1; score targets in [first, end)
        lp = torch.log_softmax(logits[first - begin - 1 : end - begin - 1], dim=-1)
        nlls.append(-lp.gather(1, ids[first:end].to(dev).unsqueeze(1))[:, 0].double().cpu())
    return from_nll(torch.cat(nlls), window, stride)


def text_ids(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """`text`'s token ids (the first `max_tokens`), at least two of them."""
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError("text is too short to measure perplexity (fewer than 2 tokens)")
    return ids


def windows(n: int, window: int = 512, stride: int = 256) -> list[tuple[int, int, int]]:
    """The strided windows over `n` tokens as (begin, end, first): the window is tokens [begin, end) and it
    scores tokens [first, end), those no earlier window scored (each token once, token 0 never)."""
    if stride <= 0 or stride > window:
        raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
    return out


def from_nll(nll: torch.Tensor, window: int, stride: int) -> dict:
    """The perplexity record from every scored token's negative log-likelihood."""
    mean = float(nll.double().mean())
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": int(nll.numel()), "window": window,
            "stride": stride}


@torch.no_grad()
def greedy_agreement(model_a, model_b, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> dict:
    """Fraction of greedily generated positions where B picks the same token as A, with B forced along
    A's continuation (teacher forcing), so one early difference does not make every later token differ.
    Also reports the fraction of prompts whose free-running greedy outputs are identical."""
    same_pos, total_pos, exact = 0, 0, 0
    for p in prompts:
        enc = tokenizer(p, return_tensors="pt")
        ids = enc["input_ids"].to(_device_of(model_a))
        out_a = model_a.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        ids_b = ids.to(_device_of(model_b))
        out_b = model_b.generate(input_ids=ids_b, attention_mask=torch.ones_like(ids_b), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        exact += int(out_a.shape == out_b.shape and bool((out_a.cpu() == out_b.cpu()).all()))
        seq = out_a.to(_device_of(model_b))
        logits_b = model_b(input_ids=seq).logits
        n_new = seq.shape[1] - ids.shape[1]
        pred_b = logits_b[0, ids.shape[1] - 1 : seq.shape[1] - 1].argmax(-1)
        same_pos += int((pred_b == seq[0, ids.shape[1]:]).sum())
        total_pos += n_new
    return {"token_agreement": same_pos / max(1, total_pos), "exact_match": exact / len(prompts),
            "positions": total_pos, "prompts": len(prompts)}
