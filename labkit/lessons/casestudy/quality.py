"""What each stage does to the answers, measured as that stage serves: held-out perplexity of the embedded model
under the stage's transformations (`perplexities`: one window at a time, or every window through the engine
at once) and greedy answers against the baseline's (`answer_agreement`, with where and why they part), and the
sentences the notebook prints from them (`answers_lines`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from labkit.core import quality
from labkit.core.bench import generate_timed
from labkit.lessons.casestudy.stages import Stage, quality_model
from labkit.serve.sequence import SamplingParams

PPL_WINDOW, PPL_STRIDE = 512, 256  # one set of windows for both ways of serving, so their numbers compare
PPL_DECODE = 16  # tokens each served window decodes, so later windows' prefills share steps with decoding


def perplexities(stages: Sequence[Stage], text: str, tokenizer, max_tokens: int | None, max_batch: int = 8,
                 progress: bool = True, baseline: float | None = None) -> list[dict]:
    """Held-out perplexity of the embedded model under each stage's transformations, measured as the stage
    serves: one window at a time through `quality.perplexity` for the one-at-a-time stages, and every window
    queued at once through the engine (`serve.experiment.served_perplexity`: chunked prefill next to the
    earlier windows' decoding, up to `max_batch` running, the same windows and scored tokens) for the batching
    stages, so a path whose numbers depend on the batch shows it here. `served` says which. `ppl_delta_pct` is
    against the first stage's perplexity, or against `baseline` where given (the best-here candidates, measured
    apart from the stack, against the stack's fp32 baseline)."""
    from labkit.core.progress import tqdm
    from labkit.lessons.batching import served_perplexity

    cache: dict = {}
    done: dict = {}
    rows = []
    for s in tqdm(list(stages), desc="perplexity", disable=not progress):
        key = (s.int8, s.dtype, s.attention, s.server)
        if key not in done:
            m = quality_model(s, cache)
            with torch.inference_mode():
                if s.server == "engine":
                    eng = _small_engine(m, s.attention, max_batch, PPL_WINDOW + PPL_DECODE)
                    done[key] = served_perplexity(eng, quality.text_ids(tokenizer, text, max_tokens), PPL_WINDOW,
                                                  PPL_STRIDE, decode_tokens=PPL_DECODE)["perplexity"]
                else:
                    done[key] = quality.perplexity(m, tokenizer, text, PPL_WINDOW, PPL_STRIDE,
                                                   max_tokens=max_tokens)["perplexity"]
        rows.append({"stage": s.name, "perplexity": done[key],
                     "served": f"batched by the engine (up to {max_batch} windows)" if s.server == "engine"
                     else "one window at a time"})
    base = rows[0]["perplexity"] if baseline is None else baseline
    for r in rows:
        r["ppl_delta_pct"] = 100 * (r["perplexity"] / base - 1)
    return rows


def answer_agreement(stages: Sequence[Stage], prompts: list[list[int]], new_tokens: int = 24, max_batch: int = 8,
                     progress: bool = True) -> list[dict]:
    """Greedy answers of the embedded model served by each stage (one request at a time through `generate`, or
    all together through the engine, as that stage serves them) against the baseline's. The shape models
    have random weights, where the top two logits are near-ties everywhere, so answers are compared here.

    `identical`: fraction of prompts with the same answer as the baseline; `agree_until`: mean fraction of each
    answer before its first differing token; `identical_to_prev`: the same answer as the stage before.
    For an engine stage, `identical_alone`: the fraction whose answer served alone through the same engine equals
    the answer served in the batch (batch invariance itself, apart from any difference between the engine's
    kernels and `generate`'s). Where an answer parts from the stage before, `parted`/`near_ties` count how many
    and how many of those part at a near-tie: the stage's own top-2 logit gap there is smaller than the stage's
    logit error against the fp32 baseline model at the same point (rounding decides, not the method);
    `max_parting_gap` is the largest such gap."""
    from labkit.core.progress import tqdm

    cache: dict = {}
    rows, ref, prev = [], None, None
    fp32 = quality_model(stages[0], cache)
    for s in tqdm(list(stages), desc="answers", disable=not progress):
        m = quality_model(s, cache)
        row: dict = {"stage": s.name, "server": s.server}
        with torch.inference_mode():
            if s.server == "engine":
                longest = max(map(len, prompts)) + new_tokens
                params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
                outs = _small_engine(m, s.attention, max_batch, longest).generate(prompts, params)
                alone = _small_engine(m, s.attention, 1, longest).generate(prompts, params)  # one running at a time
                row["identical_alone"] = sum(a == b for a, b in zip(alone, outs, strict=True)) / len(outs)
            else:
                outs = [generate_timed(m, torch.tensor([p]), new_tokens)[1][0, len(p):].tolist() for p in prompts]
            gaps = [_parting(m, fp32, p, o, q) for p, o, q in zip(prompts, outs, prev or outs, strict=True) if o != q]
        ref, prev = ref or outs, prev or outs
        until = [next((i for i, (a, b) in enumerate(zip(o, r, strict=True)) if a != b), len(r)) / len(r)
                 for o, r in zip(outs, ref, strict=True)]
        row.update({"identical": sum(u == 1.0 for u in until) / len(until), "agree_until": sum(until) / len(until),
                    "identical_to_prev": sum(a == b for a, b in zip(outs, prev, strict=True)) / len(outs),
                    "parted": len(gaps), "near_ties": sum(g < e for g, e in gaps),
                    "max_parting_gap": max((g for g, _ in gaps), default=None)})
        rows.append(row)
        prev = outs
    return rows


def answers_lines(rows: list[dict]) -> list[str]:
    """What the answers table says about batching, in words built from it: for the first stage the engine
    serves, whether the batch changes a request's answer (alone vs batched through the same engine), and whether
    the answers that differ from the one-at-a-time stage before part at near-ties."""
    out = []
    i = next((k for k, r in enumerate(rows) if r["server"] == "engine"), None)
    if i is None or i == 0:
        return out
    r, before = rows[i], rows[i - 1]["stage"]
    same = r["identical_alone"]
    out.append(f"{r['stage']}: served alone through the same engine, {same:.0%} of the answers equal those served "
               f"in the batch: " + ("the batch does not change what a request gets back (batch-invariant)"
                                    if same == 1 else "the batch changes what some requests get back"))
    if r["parted"]:
        how = ("each at a near-tie (the top two logits closer than the model's own logit error against fp32, "
               f"largest gap {r['max_parting_gap']:.4f}): rounding in different kernels, not the method"
               if r["near_ties"] == r["parted"] else
               f"{r['near_ties']} of them at a near-tie, {r['parted'] - r['near_ties']} at a clear margin "
               f"(largest top-2 gap {r['max_parting_gap']:.4f})")
        out.append(f"Against {before} (one at a time through generate): {r['identical_to_prev']:.0%} identical; the "
                   f"{r['parted']} that differ part {how}")
    else:
        out.append(f"Against {before} (one at a time through generate): every answer identical")
    return out


def _small_engine(model, attention: str, max_num_seqs: int, max_len: int):
    """An engine whose KV cache holds just `max_num_seqs` sequences of `max_len` tokens (the default 1 GiB cache
    is zeroed at every construction: seconds, for a few short requests)."""
    from labkit.serve.engine import LLMEngine

    block = 16
    return LLMEngine.from_model(model, max_num_seqs=max_num_seqs, attention=attention, max_model_len=max_len,
                                block_size=block, num_blocks=max_num_seqs * -(-max_len // block))


def _parting(model, fp32, prompt: list[int], out: list[int], before: list[int]) -> tuple[float, float]:
    """Where `out` first parts from `before`: (the model's top-2 logit gap there, on the earlier answer's prefix;
    the largest difference between its logits and the fp32 model's at that point)."""
    i = next(k for k, (a, b) in enumerate(zip(out, before, strict=True)) if a != b)
    ids = torch.tensor([prompt + before[:i]])
    logits = model(input_ids=ids).logits[0, -1].float()
    top2 = logits.topk(2).values
    return float(top2[0] - top2[1]), float((logits - fp32(input_ids=ids).logits[0, -1].float()).abs().max())
