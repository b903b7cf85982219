"""The peers' batched throughput: how much each runtime gains by serving several requests at once on this machine.

Batch 1 (the peers table's prefill and decode columns) is one user. A server with several users at once runs their
requests as one batch, and a decode step then reads the weights once for all of them: on a CPU whose decode is bound
by memory bandwidth, the batch's tokens come nearly for free until the matmuls' compute catches up. How near depends
on the runtime's kernels, so it is measured, per runtime, in rotating rounds:

- `@1`: one request (a `prompt`-token prompt, `new_tokens` greedy tokens), through the row's batch-1 call;
- `@B`: B requests of the same length at once (B different prompts, the first one `@1`'s), through the runtime's
  own batched call (`of`: each runner's `generate_batch`): transformers' `generate` on the B rows (`hf`),
  CTranslate2's `generate_batch`, ONNX Runtime GenAI's Generator with `batch_size`, OpenVINO GenAI's LLMPipeline on
  tokenized inputs of B rows.

Columns: `batch-B tok/s` (the B x new_tokens output tokens over the batched call's wall time, its prefill included)
and `batching gain` (that against one request's output tokens/s, the median of the per-round ratios), and whether
the first request's tokens in the batch equal its tokens alone (a batch-dependent path, such as a per-tensor int8
whose activation scale is taken over the whole batch, may answer differently next to other requests). A runtime
without a batched call here (llama-cpp-python's Llama serves one sequence; labkit's compiled decoder is built for
batch 1) is a row saying so.
"""

from __future__ import annotations

import torch

NO_BATCH = {
    "llama.cpp": "not measured: llama-cpp-python's Llama serves one sequence at a time (llama.cpp's own server "
                 "batches several; not driven here)",
    "labkit+compile": "not measured: labkit's compiled decoder (StaticDecoder) decodes one request at a time; "
                      "notebook 05's engine is labkit's batching",
}


def of(runner, engine: str) -> object:
    """The batched call of `runner` (its `generate_batch`: callable(ids [B, L], new_tokens) -> B token lists), or
    why there is none."""
    return getattr(runner, "generate_batch", None) or NO_BATCH.get(engine, f"not measured: no batched call in {engine}")


def hf(model) -> object:
    """transformers' greedy `generate` on B rows of the same length (no padding needed), exactly n tokens each."""

    def run(ids: torch.Tensor, n: int) -> list[list[int]]:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             min_new_tokens=n, max_new_tokens=n)
        return out[:, ids.shape[1]:].tolist()

    return run


def measure(paths, batch: int, prompt: int, new_tokens: int, repeats: int, vocab_size: int, seed: int = 0,
            progress: bool = True):
    """({row name: its batched columns}, the Rounds or None) for `paths` (peer_runtimes.Contender rows, timed ones
    only): each row with a batched call timed `@1` and `@B` in the same rotating rounds (labkit.core.bench.run_rounds);
    a row without one gets its reason."""
    from labkit.core.bench import run_rounds
    from labkit.core.models import prompt_ids

    if batch < 2:
        raise ValueError(f"batch must be at least 2, got {batch}")
    ids = prompt_ids(prompt, batch=batch, vocab_size=vocab_size, seed=seed + 1)
    out, callers, alone, first = {}, {}, {}, {}
    for p in paths:
        if not callable(p.batch):
            out[p.name] = {"batched": p.batch or "not measured: no batched call"}
            continue

        def one(p=p) -> None:
            alone[p.name] = p.run(ids[:1], new_tokens)[1]

        def many(p=p) -> None:
            first[p.name] = p.batch(ids, new_tokens)[0]

        callers[f"{p.name} @1"], callers[f"{p.name} @{batch}"] = one, many
    if not callers:
        return out, None
    with torch.inference_mode():
        r = run_rounds(callers, repeats, progress=progress, desc=f"batch 1 and {batch} rounds")
    for name in {k.rsplit(" @", 1)[0] for k in callers}:
        gain = r.ratio(f"{name} @1", f"{name} @{batch}")  # one request's time over the batch's, per round
        gain.values = [batch * v for v in gain.values]  # x B: the batch's output tokens/s over one request's
        out[name] = {f"batch-{batch} tok/s": batch * new_tokens / r.median(f"{name} @{batch}"),
                     "batching gain": gain.value, "batching gain rounds": list(gain.values),
                     "batched": "ok" if first[name] == alone[name] else
                     "ok, but its first request's tokens differ from its tokens alone (batch-dependent)"}
    return out, r


def note(batch: int, prompt: int, new_tokens: int) -> str:
    """What the batched columns are, for under the table."""
    return (f"batched: batch-{batch} tok/s = {batch} requests of {prompt} prompt tokens served at once, "
            f"{batch} x {new_tokens} output tokens over the call's wall time (its prefill included); batching gain = "
            f"that against one such request alone, timed in the same rounds (median of the per-round ratios)")
