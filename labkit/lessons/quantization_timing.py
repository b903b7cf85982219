"""Notebook 02's timing under a time budget: each row probed briefly, then the rounds that fit.

`time_rows` times the speed rows (labkit.lessons.quantization.benchmark_methods) in rotating rounds. With a
deadline (the lesson's `budget_s`), every row is first probed with 2 tokens, an eager row at a PROBE_PROMPT-token
prompt (twice: its cold call, then its warm cost, the prefill scaled to the full prompt), and labkit.core.budget
decides what the rounds can run. `compile_cost` says, from the same probe, whether a compiled row's set-up (its
check against eager and its prefill choice, SETUP_PREFILLS full-prompt prefills, plus compiling) fits what is
left: on a CPU with no fast kernel for the path, those prefills alone can take minutes (issue 29: int8-dynamic's
256-token prefill took ~20 s on an AVX2-only EPYC). Before any of that, `slow_kernels` times the int8 kernel of
each INT8 row (`kernel_rates`, one matrix each, also what notebook 07 uses to order its INT8 candidates): a row
whose kernel is far slower than another INT8 row's and whose rounds would take a large share of what is left is
not even quantized; its status gives the rates, the estimate and the budget that runs it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from labkit.core.budget import MIN_TOKENS, RowCost, choose, suggest_budget

PROBE_PROMPT = 32  # the budget's probe of an eager row runs at this many prompt tokens (its prefill is scaled up)
SETUP_PREFILLS = 5  # a compiled row's set-up: the eager reference's prefill and choose_prefill's 2 x 2 prefills
SETUP_SHARE = 0.5  # a compiled row is set up only if that takes at most this share of the time left
KERNEL_TOKENS = 32  # the rows of the one-matrix product that times an INT8 row's int8 kernel before quantizing
KERNEL_GAP = 10.0  # an INT8 row whose kernel runs over this many times slower than another INT8 row's ...
KERNEL_SHARE = 0.10  # ... and one of whose prefills would take over this share of the time left is not quantized:
# the time left pays for every row's quantizing and probe before the rounds (on an AVX2-only EPYC ~75 of ~145 s), so
# a row whose one call takes a tenth of it would not fit the rounds beside the others (budget.choose drops it there)


def linear_flops(model) -> float:
    """FLOPs per prompt token of `model`'s decoder linears (the output head runs for the last token only)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)


def kernel_rates(model, candidates: Sequence[str], device: str) -> dict[str, tuple[float, str]]:
    """{method: (FLOP/s, kernel)} of the int8 matmul each candidate calls (labkit.core.probes.METHOD_KERNELS), timed
    on one KERNEL_TOKENS x hidden by (hidden x hidden)^T product, the fastest of 2 calls; a method with no entry (a
    weight-only path) is not in it. Measured before anything is quantized: on an AVX2-only EPYC torchao's per-token
    int8 calls torch._int_mm at ~6 GFLOP/s against fbgemm's ~240, and quantizing and probing it (in fp32 and bf16)
    took ~45 s of notebook 07 only to find it out (issue 29)."""
    from labkit.core import probes

    h = getattr(getattr(model, "config", None), "hidden_size", None)
    out = {}
    for method in candidates:
        if h is None or method not in probes.METHOD_KERNELS:
            continue
        call, flops, kernel = probes.matrix_kernel("int8", KERNEL_TOKENS, h, h, device, repeats=2, method=method)
        out[method] = (flops / call()["kernel_s"], kernel)
    return out


def slow_kernels(model, methods: Sequence[str], prompt_len: int, repeats: int, deadline: float,
                 budget_s: float | None, device: str, rates: dict | None = None) -> dict[str, str]:
    """{method: status} of the INT8 rows of `methods` not to quantize or time under a budget: a row whose int8 kernel
    (`kernel_rates`, or `rates` already timed) runs over KERNEL_GAP x slower than another INT8 row's and one of whose
    prefills of `prompt_len` tokens, at that kernel's rate, would take over KERNEL_SHARE of the time left before
    `deadline`. On an AVX2-only EPYC torchao's per-token int8 (torch._int_mm, ~5 GFLOP/s against fbgemm's
    ~240) cost ~10 s of notebook 02 to quantize and probe before the budget left it out anyway (issue 29). A CPU
    whose kernels are close (VNNI, AMX) or a larger budget quantizes and times every row as before."""
    rates = kernel_rates(model, methods, device) if rates is None else rates
    if len(rates) < 2:
        return {}
    top, top_kernel = max(rates.values())
    h = model.config.hidden_size
    left = max(deadline - time.perf_counter(), 0.0)
    out = {}
    for method, (rate, kernel) in rates.items():
        est = linear_flops(model) * prompt_len / rate
        if rate * KERNEL_GAP >= top or est <= KERNEL_SHARE * left:
            continue
        more = suggest_budget((budget_s or 0.0) + est / KERNEL_SHARE - left)
        out[method] = (f"not run here: its int8 matmul ({kernel}) ran at {rate / 1e9:,.1f} GFLOP/s on one "
                       f"{KERNEL_TOKENS} x {h} by ({h} x {h})^T product, {top / rate:,.0f}x slower than {top_kernel} "
                       f"({top / 1e9:,.0f} GFLOP/s), so its {prompt_len}-token prefill's matmuls alone would take "
                       f"~{est:,.0f} s a call here, more than {KERNEL_SHARE:.0%} of the {left:.0f} s left of the "
                       f"budget for quantizing, probing and timing every row ({repeats} rounds); not quantized, not "
                       "timed; "
                       f"run with -p budget_s={more}")
    return out


def probe(f, scale: float) -> tuple[dict, RowCost]:
    """A row's probe at the short prompt: (its cold call's {"s", "ttft", "tpot"}, its warm cost with the prefill
    scaled by `scale` to the full prompt)."""
    t = time.perf_counter()
    cold = {"s": 0.0, **f(MIN_TOKENS)}
    cold["s"] = time.perf_counter() - t
    warm = f(MIN_TOKENS)
    return cold, RowCost(warm["ttft"] * scale, warm["tpot"])


def compile_cost(name: str, cost: RowCost, deadline: float, budget_s: float | None) -> str | None:
    """None when setting up `name`'s compiled row fits SETUP_SHARE of the time left before `deadline`; else the
    row's status, with what it would cost here and the budget that runs it."""
    left = max(deadline - time.perf_counter(), 0.0)
    setup = SETUP_PREFILLS * cost.prefill_s
    if setup <= SETUP_SHARE * left:
        return None
    more = suggest_budget((budget_s or 0.0) + setup)
    return (f"not run here: checking its compiled path against eager and choosing its prefill would take at least "
            f"~{setup:.0f} s on this machine ({SETUP_PREFILLS} full-prompt prefills of the eager {name} at "
            f"~{cost.prefill_s:.1f} s each, from a {PROBE_PROMPT}-token probe), plus compiling, more than "
            f"{SETUP_SHARE:.0%} of the {left:.0f} s left of the budget; run with -p budget_s={more}")


@dataclass
class Timing:
    """What `time_rows` measured: the Rounds each timed row's numbers come from, the first call of each row, the
    load while timing, and the budget's choice (None: no budget, every row in `repeats` rounds)."""

    rounds_of: dict
    cold: dict
    load: dict
    choice: object = None
    probe_s: float = 0.0
    probed_short: tuple = ()  # rows whose first call was the probe at a short prompt (PROBE_PROMPT tokens)

    def summary(self) -> dict | None:
        c = self.choice
        if c is None:
            return None
        return {"budget_s": c.budget_s, "wanted_s": c.wanted_s, "planned_s": c.seconds, "probe_s": self.probe_s,
                "rounds": c.rounds, "once": c.once, "not_run": c.not_run, "tokens": c.tokens, "over": c.over}


def time_rows(callers: dict, repeats: int, new_tokens: int, deadline: float | None, budget_s: float | None,
              progress: bool, probes: dict | None = None, scale: float = 1.0, probed: dict | None = None) -> Timing:
    """Time `callers` (row -> call of `t` tokens) in rotating rounds: all of them as asked without a deadline; with
    one, after a 2-token probe of each, what labkit.core.budget.choose fits into the time left.

    `probes` (row -> the same call at a prompt `scale` times shorter): those rows are probed there (`probe`);
    `probed`: rows probed already (row -> what `probe` returned), not probed again."""
    from labkit.core.bench import run_rounds

    if deadline is None:
        r = run_rounds({n: (lambda f=f: f(new_tokens)) for n, f in callers.items()}, repeats, progress=progress)
        return Timing({n: r for n in callers}, r.cold, r.load)
    t0 = time.perf_counter()
    cold, costs = {}, {}
    probed = dict(probed or {})
    short = tuple(n for n in callers if n in probed or (probes and n in probes))
    for name, f in callers.items():
        if name in short:
            cold[name], costs[name] = probed.get(name) or probe(probes[name], scale)
        else:  # the probe is the row's cold call, at the full prompt
            t = time.perf_counter()
            cold[name] = {"s": 0.0, **f(MIN_TOKENS)}
            cold[name]["s"] = time.perf_counter() - t
            costs[name] = RowCost(cold[name]["ttft"], cold[name]["tpot"])
    probe_s = time.perf_counter() - t0
    choice = choose(costs, max(deadline - time.perf_counter(), 0.0), repeats, new_tokens,
                    lesson_budget_s=budget_s)
    main = run_rounds({n: (lambda f=callers[n], t=choice.tokens[n]: f(t)) for n in choice.main}, choice.rounds,
                      cold=False, progress=progress)
    rounds_of = {n: main for n in choice.main}
    if choice.once:
        refs = [n for n in choice.main if n in ("fp32", "bf16")]
        once = run_rounds({n: (lambda f=callers[n], t=choice.tokens[n]: f(t)) for n in [*refs, *choice.once]}, 1,
                          cold=False, progress=progress, desc="slow rows, once")
        rounds_of.update({n: once for n in choice.once})
    return Timing(rounds_of, cold, main.load, choice, probe_s, short)
