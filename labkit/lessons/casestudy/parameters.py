"""Notebook 07's parameters, resolved and checked at once so that a bad one fails before a model is built:
`settings` fills the preset's defaults, checks every value (labkit.core.params: the error names what is valid)
picks the INT8 candidates the preset measures on this device (`int8.int8_candidates`) and whether the best-here
candidates are measured beside the stack (`best.best_here_wanted`).
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.lessons.casestudy.best import best_here_wanted
from labkit.lessons.casestudy.int8 import int8_candidates as preset_candidates
from labkit.lessons.casestudy.stages import EXTRAS

# the ci preset's time budget for notebook 07 (issue 29): on an AVX2-only EPYC a round of every stage replaying the
# trace took ~116 s, and the second round pushed the lesson to ~400 s; on faster machines both rounds fit
BUDGET_CI_S = 300.0


@dataclass(frozen=True)
class Settings:
    """The resolved parameters the later cells of notebook 07 use (None in the parameters cell: the preset's)."""

    device: str
    layers: int
    n_requests: int
    output_len: int
    idle_repeats: int
    rounds: int
    ppl_tokens: int | None  # None: every held-out token
    rate: float | None  # requests/s; None for all-at-once arrivals
    int8: str | None  # None: `pick_int8` measures the candidates and takes the fastest
    int8_candidates: list[str]
    left_out: list[dict]  # a row for each INT8 method the pick does not measure, saying why
    extras: list[str]
    best_here: bool = False  # measure what pays most on this machine beside the stack (best.best_here_wanted)
    best_here_why: str = ""  # why it is measured or not, in a sentence
    budget_s: float | None = None  # seconds the lesson may take here: replay rounds that would not fit are not run


def settings(preset: str, *, model: str, device: str = "auto", seed: int = 0, layers: int | None = None,
             n_requests: int | None = None, prompt_len: int = 512, output_len: int | None = None,
             arrival: str = "all-at-once", rate: float | None = None, max_batch: int = 8,
             idle_repeats: int | None = None, rounds: int | None = None, int8: str | None = None,
             int8_candidates: list[str] | None = None, extras: list[str] | None = None,
             ppl_tokens: int | None = None, best_here: bool | None = None,
             budget_s: float | None = None) -> Settings:
    """Notebook 07's parameters resolved for `preset`: the device ('auto' -> cuda where usable), the preset's value
    for each one left None (extras: every extra stage), every one checked; a poisson arrival's rate defaults to
    2.0 requests/s; best_here None: on where this machine has no int8 or bf16 matrix units (best.best_here_wanted);
    budget_s None: the preset's (ci BUDGET_CI_S, full none).
    Parameters that need no resolving (seed, prompt_len, max_batch, arrival) are checked here and kept by the
    notebook."""
    from labkit.core import hardware, models
    from labkit.core.params import check, default, resolve_device
    from labkit.serve import workload
    from labkit.techniques import quant

    device = resolve_device(device)
    models.check_speed_model(check("model", model, str))  # a shape name or a model folder (its first layers)
    for name, value in [("seed", seed), ("prompt_len", prompt_len), ("max_batch", max_batch)]:
        check(name, value, int, min=0 if name == "seed" else 1)
    resolved = {
        "layers": default("layers", layers, preset, ci=1, full=4, min=1, max=models.shape(model).num_hidden_layers),
        "n_requests": default("n_requests", n_requests, preset, ci=8, full=16, min=1),
        "output_len": default("output_len", output_len, preset, ci=32, full=128, min=2),
        "idle_repeats": default("idle_repeats", idle_repeats, preset, ci=2, full=5, min=1),
        "rounds": default("rounds", rounds, preset, ci=2, full=3, min=1),
        "ppl_tokens": default("ppl_tokens", ppl_tokens, preset, ci=4096, full=None, min=64)}
    check("arrival", arrival, str, choices=workload.ARRIVALS)
    rate = None if arrival == "all-at-once" else check("rate", 2.0 if rate is None else rate, float, min=1e-3)
    int8 = int8 if int8 is None else check("int8", int8, str, choices=quant.INT8_METHODS)
    chosen, left_out = preset_candidates(preset, device)
    candidates = check("int8_candidates", int8_candidates or chosen, list, choices=quant.INT8_METHODS)
    extras = check("extras", list(EXTRAS) if extras is None else extras, list, choices=EXTRAS)
    on, why = best_here_wanted(best_here, device, hardware.matrix_units(), preset)
    budget_s = default("budget_s", budget_s, preset, ci=BUDGET_CI_S, full=None, kind=float, min=60.0)
    return Settings(device=device, **resolved, rate=rate, int8=int8, int8_candidates=candidates, left_out=left_out,
                    extras=extras, best_here=on, best_here_why=why, budget_s=budget_s)
