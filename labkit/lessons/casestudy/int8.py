"""The '+ INT8' stage's method, picked by measurement: `int8_candidates` (what the preset measures on this kind of
device, and a row for every method left out, saying why) and `pick_int8` (every candidate timed on one request
in rotating rounds, the fastest taken, a batch-invariant path preferred within INVARIANT_SLACK).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from labkit.core import hardware
from labkit.core.bench import generate_timed
from labkit.lessons.quantization_timing import PROBE_PROMPT, kernel_rates, linear_flops, probe
from labkit.techniques import quant

INVARIANT_SLACK = 1.5  # a batch-invariant INT8 path is preferred unless the fastest other one is 1.5x faster
INT8_CANDIDATES = {"cpu": ("int8-dynamic-onednn", "int8-dynamic-legacy", "int8-dynamic", "int8-weight-only"),
                   "cuda": ("int8-weight-only", "int8-dynamic", "bnb-int8")}


def int8_candidates(preset: str, device: str) -> tuple[list[str], list[dict]]:
    """The INT8 methods `pick_int8` measures for `preset` on `device`, and a row for each one left out: the full
    preset measures every candidate for the device; ci two dynamic ones: one per-token path (oneDNN's where this
    CPU runs it, else torchao's) and torch.ao's per-tensor one it is weighed against, since each other variant
    adds its quantization and timing rounds to the course (weight-only INT8 cost ~20 s to be eliminated after its
    first request on the CPUs measured so far; torchao's per-token path computes what the oneDNN one does
    through a slower kernel)."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    every = list(INT8_CANDIDATES[dev])
    per_token = "int8-dynamic-onednn" if hardware.onednn_unsupported(dev) is None else "int8-dynamic"
    chosen = [m for m in every if m in (per_token, "int8-dynamic-legacy")] if preset == "ci" else every
    chosen = chosen or every
    rows = [{"method": m, "status": f"not measured in the {preset} preset (-p int8_candidates or --preset full)"}
            for m in every if m not in chosen]
    for m in quant.INT8_METHODS:  # the INT8 methods that are no candidate on this kind of device, and why
        if m not in every:
            why = quant.unsupported(m, dev, torch.float32) or NOT_A_CANDIDATE.get(m, "not a candidate on " + dev)
            rows.append({"method": m, "status": f"not a candidate: {why}"})
    return chosen, rows


NOT_A_CANDIDATE = {"bnb-int8": "batch-dependent (LLM.int8 picks its outlier columns over the whole batch, so a "
                               "request's answer can change with its neighbours); notebook 02 measures its speed"}


ELIMINATE_ABOVE = 3.0  # a variant whose probe estimates over 3x the fastest one's request is out before the rounds
def _kernel_why(method: str, rates: dict, est: float, best: float) -> str:
    rate, kernel = rates[method]
    top = max(rates.values())
    return (f"out before quantizing: its int8 matmul ({kernel}) ran at {rate / 1e9:,.1f} GFLOP/s here "
            f"({top[1]}: {top[0] / 1e9:,.0f}), so its prefill alone would take ~{est:,.0f} s, over {ELIMINATE_ABOVE}x "
            f"the fastest request's estimate (~{best:,.1f} s); not quantized, not timed")


def pick_int8(model, prompt: torch.Tensor, candidates: Sequence[str], new_tokens: int = 8,
              output_len: int = 32, rounds: int = 2, progress: bool = True, keep: dict | None = None):
    """Quantize `model` with each INT8 candidate, in fp32 and, where the method accepts it, in bf16 (the stack
    adds bf16 as its last stage where it can), and time one request (prompt + `new_tokens`) per variant per
    round, rounds rotating the order (labkit.core.bench.run_rounds, first call apart). The method whose fastest
    variant serves a request of `output_len` tokens soonest (TTFT + (output_len - 1) x TPOT, medians over
    rounds) is picked, except that a batch-invariant path (quant.BATCH_INVARIANT: a request's answer does not
    depend on its batch neighbours) within INVARIANT_SLACK of it is preferred; each row says why it was not
    picked. Every variant is first probed at a PROBE_PROMPT-token prompt (a cold call, then a warm one whose
    prefill is scaled to the full prompt): one whose estimated request takes over ELIMINATE_ABOVE x the fastest
    estimate is out before its first full request (its row says so, with the estimate; issue 29: torchao's
    per-token int8 took 68 s for one 512-token prefill on an AVX2-only EPYC, twice over in two dtypes). Before
    that, each candidate's int8 kernel is timed on one matrix (`kernel_rates`) and the candidates are quantized
    fastest kernel first: one whose prefill alone, at its kernel's measured rate, would take over ELIMINATE_ABOVE x
    the fastest estimate so far is out before it is quantized (its row gives the rates and the estimate).
    Returns (method, rows): a method this machine cannot run is a row "skipped: <reason>".
    `keep`: a dict that receives the picked method's quantized models by (method, dtype), for `measure`."""
    from labkit.core.bench import run_rounds
    from labkit.core.progress import tqdm

    dev = str(next(model.parameters()).device).split(":")[0]
    rows, runners, cost = [], {}, {}

    def request(q, ids=prompt, n=new_tokens):
        def run() -> dict:
            rt, _ = generate_timed(q, ids, n)
            return {"ttft": rt.ttft, "tpot": rt.tpot}
        return run

    short, scale = prompt, 1.0
    if prompt is not None and prompt.shape[1] > PROBE_PROMPT:
        short, scale = prompt[:, :PROBE_PROMPT], prompt.shape[1] / PROBE_PROMPT
    rates = kernel_rates(model, candidates, dev) if prompt is not None else {}
    order = sorted(candidates, key=lambda m: -rates[m][0] if m in rates else float("-inf"))  # fastest kernel first
    bf16 = None
    with torch.inference_mode():
        for method in tqdm(order, desc="INT8 paths", disable=not progress):
            if cost and method in rates:  # its prefill alone, at its kernel's rate, against the fastest request
                est = linear_flops(model) * prompt.shape[1] / rates[method][0]
                if est > ELIMINATE_ABOVE * min(cost.values()):
                    rows += [{"method": method, "dtype": dt, "status": "probed only",
                              "why_not": _kernel_why(method, rates, est, min(cost.values()))}
                             for dt in ("fp32", "bf16") if dt == "fp32" or not quant.unsupported(method, dev,
                                                                                              torch.bfloat16)]
                    continue
            for dtype in ("fp32", "bf16"):
                if dtype == "bf16" and quant.unsupported(method, dev, torch.bfloat16):
                    continue
                if dtype == "bf16" and bf16 is None:
                    bf16 = copy.deepcopy(model).to(torch.bfloat16)
                try:
                    q = runners[(method, dtype)] = quant.quantize(model if dtype == "fp32" else bf16, method)
                except quant.QuantSkipped as e:
                    rows.append({"method": method, "dtype": dtype, "status": f"skipped: {e}"})
                    break
                # 02's probe: a cold call kept apart, then the warm one, its prefill scaled to the full prompt
                cost[(method, dtype)] = probe(lambda n, q=q: request(q, short, n)(), scale)[1].call_s(output_len)
    del bf16
    if not runners:
        raise quant.QuantSkipped("no INT8 path runs here: " + "; ".join(f"{r['method']}: {r['status']}"
                                                                        for r in rows))
    with torch.inference_mode():
        for key in [k for k, c in cost.items() if c > ELIMINATE_ABOVE * min(cost.values())]:
            rows.append({"method": key[0], "dtype": key[1], "status": "probed only", "estimate_s": cost[key],
                         "probe_prompt": short.shape[1] if short is not None else None, "scale": scale})
            del runners[key]
        r = run_rounds({f"{m} {dt}": request(q) for (m, dt), q in runners.items()}, rounds, cold=True,
                       progress=progress, desc="INT8 timing rounds")
    for m, dt in runners:
        ttft, tpot = r.median(f"{m} {dt}", "ttft"), r.median(f"{m} {dt}", "tpot")
        rows.append({"method": m, "dtype": dt, "status": "ok", "ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3,
                     "request_s": ttft + (output_len - 1) * tpot})
    ok = [row for row in rows if row["status"] == "ok"]
    best = min(ok, key=lambda row: row["request_s"])
    invariant = [row for row in ok if row["method"] in quant.BATCH_INVARIANT]
    best_inv = min(invariant, key=lambda row: row["request_s"]) if invariant else None
    if best_inv is not None and best_inv["request_s"] <= INVARIANT_SLACK * best["request_s"]:
        best = best_inv  # a request's answer should not depend on its batch neighbours: worth a little speed
    for row in rows:
        if row["status"] == "probed only" and "estimate_s" in row:
            est, n = row.pop("estimate_s"), row.pop("probe_prompt")
            at = f"a {n}-token prompt, prefill scaled {row.pop('scale'):.0f}x" if n else "the full prompt"
            row["why_not"] = (f"out after its probe: its request estimated at ~{est:.0f} s ({at}), over "
                              f"{ELIMINATE_ABOVE}x the fastest estimate; not timed in full")
    for row in ok:
        row["batch_invariant"] = row["method"] in quant.BATCH_INVARIANT
        row["picked"] = row["method"] == best["method"]
        if not row["picked"]:
            faster = row["request_s"] < best["request_s"]
            row["why_not"] = (f"answers depend on batch neighbours, and a batch-invariant path is within "
                              f"{INVARIANT_SLACK}x of it" if faster and not row["batch_invariant"] else "slower")
    if keep is not None:
        keep.update({key: q for key, q in runners.items() if key[0] == best["method"]})
    if best["method"] not in quant.BATCH_INVARIANT:
        if invariant:
            why = f"every batch-invariant path timed here is more than {INVARIANT_SLACK}x slower"
        else:  # say so rather than imply a comparison that was not made
            absent = [m for m in quant.BATCH_INVARIANT if m.startswith("int8")]
            why = (f"no batch-invariant path was timed here ({', '.join(absent)} not among the timed candidates; "
                   "-p int8_candidates adds them)")
        for row in ok:
            if row["picked"]:
                row["note"] = f"batch-dependent (answers can change with batch neighbours): {why}"
    return best["method"], rows
