"""Which timed rows fit a lesson's time budget on this machine, decided from what one short probe of each row cost.

A preset is a fixed list of sizes and rows; on a slow machine every slow row would run anyway, mostly to show that
a path without hardware support is slow, which one short measurement already shows. So a lesson with a budget
(`budget_s`) first times each row once with the fewest tokens that give a time per output token (the probe, which
is also its cold call), then asks `choose` what fits: all rows as the preset asks; else the rows slower than the
references the ratios are taken against, costliest first, cut to the fewest tokens and timed in one round of their
own beside the references; else fewer rounds for the rest; else the costliest rows not run, each with what it would have
cost here and the budget that runs it. A row is never dropped silently and never reported as measured when it was
not: `Choice.notes` says for every row that was cut or not run what happened and why.

Pure arithmetic on seconds (no torch): tested with fake costs in tests/test_quant_experiment.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MIN_TOKENS = 2  # the fewest output tokens that give a time per output token (TPOT needs two)


@dataclass(frozen=True)
class RowCost:
    """What one call of a row costs here: its prefill (time to first token) and one decode step, from a probe."""

    prefill_s: float
    step_s: float

    def call_s(self, tokens: int) -> float:
        """One call generating `tokens` tokens: the prefill and tokens - 1 decode steps."""
        return self.prefill_s + max(tokens - 1, 0) * self.step_s


@dataclass
class Choice:
    """What runs: `rounds` rotating rounds of the rows in `main`, then (if `once` is not empty) one round of the
    rows in `once` beside the references; `tokens[row]` output tokens per call; `not_run[row]` the seconds the row
    would have taken at the preset's sizes. `seconds` is the estimate of the whole plan."""

    rounds: int
    main: list[str]
    once: list[str]
    tokens: dict[str, int]
    not_run: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    budget_s: float | None = None
    wanted_s: float = 0.0  # what the preset's sizes would have cost
    notes: dict[str, str] = field(default_factory=dict)  # row -> what was cut and the budget that runs it all
    over: str | None = None  # set when even the references alone do not fit

    @property
    def cut(self) -> bool:
        """True when anything ran at less than the preset's sizes, or not at all."""
        return bool(self.notes)


def plan_seconds(costs: dict[str, RowCost], rounds: int, main: list[str], once: list[str], refs: list[str],
                 tokens: dict[str, int]) -> float:
    """Seconds a plan takes: `rounds` rounds of the `main` rows, then one round of `once` with the references."""
    total = rounds * sum(costs[n].call_s(tokens[n]) for n in main)
    if once:
        total += sum(costs[n].call_s(tokens[n]) for n in [*once, *refs])
    return total


def suggest_budget(seconds: float, step: float = 50.0) -> int:
    """A round number of seconds at least `seconds` (a budget to suggest on the command line)."""
    return int(math.ceil(seconds / step) * step)


def choose(costs: dict[str, RowCost], budget_s: float | None, rounds: int, tokens: int,
           refs: tuple[str, ...] = ("fp32", "bf16"), min_tokens: int = MIN_TOKENS, lesson_budget_s: float | None = None,
           param: str = "budget_s") -> Choice:
    """Fit the rows of `costs` (in their order) into `budget_s` seconds; `refs` are always timed in every round.

    Cuts, in this order, until the estimate fits: (1) the costliest row slower than the references (a path this
    machine has no fast kernel for) to `min_tokens` tokens and into one round of its own beside the references, the
    next costliest, ...; (2) fewer rounds for the remaining rows, down
    to one; (3) the costliest other rows not run. `lesson_budget_s` (the whole lesson's budget, of which `budget_s`
    is what is left for these rows) sets the budget the "not run" notes suggest; `param` names the parameter."""
    if rounds < 1 or tokens < min_tokens:
        raise ValueError(f"rounds must be >= 1 and tokens >= {min_tokens}, got {rounds} and {tokens}")
    names = list(costs)
    refs_here = [n for n in names if n in refs]
    toks = {n: tokens for n in names}
    wanted = plan_seconds(costs, rounds, names, [], refs_here, toks)
    choice = Choice(rounds, names, [], toks, seconds=wanted, budget_s=budget_s, wanted_s=wanted)
    if budget_s is None or wanted <= budget_s:
        return choice

    def fits() -> bool:
        choice.seconds = plan_seconds(costs, choice.rounds, choice.main, choice.once, refs_here, choice.tokens)
        return choice.seconds <= budget_s

    others = sorted((n for n in names if n not in refs), key=lambda n: -costs[n].call_s(tokens))
    ref_cost = max((costs[n].call_s(tokens) for n in refs_here), default=0.0)
    for n in (n for n in others if costs[n].call_s(tokens) > ref_cost):  # (1) rows slower than the references:
        choice.main.remove(n)  # the fewest tokens, one round beside the references
        choice.once.append(n)
        choice.tokens[n] = min(tokens, min_tokens)
        if fits():
            break
    while not fits() and choice.rounds > 1:  # (2) fewer rounds for the rest
        choice.rounds -= 1
    for n in others:  # (3) not run, the costliest first
        if fits():
            break
        (choice.once if n in choice.once else choice.main).remove(n)
        choice.not_run[n] = rounds * costs[n].call_s(tokens)
    fits()
    _notes(choice, costs, rounds, tokens, refs_here, lesson_budget_s if lesson_budget_s is not None else budget_s,
           param)
    return choice


def _notes(choice: Choice, costs: dict[str, RowCost], rounds: int, tokens: int, refs: list[str], lesson_budget: float,
           param: str) -> None:
    """One sentence per row that did not run as the preset asked."""
    for n in choice.once:
        choice.notes[n] = (f"timed once with {choice.tokens[n]} of {tokens} tokens (beside {', '.join(refs)}), not in "
                           f"{rounds} rounds: the preset's sizes would take ~{rounds * costs[n].call_s(tokens):.0f} s "
                           f"here; run with -p {param}={suggest_budget(lesson_budget + choice.wanted_s)}")
    if choice.rounds < rounds:
        for n in choice.main:
            choice.notes[n] = (f"timed in {choice.rounds} of {rounds} rounds to fit -p {param}={lesson_budget:.0f}; "
                               f"run with -p {param}={suggest_budget(lesson_budget + choice.wanted_s)} for all of them")
    for n, s in choice.not_run.items():
        choice.notes[n] = (f"not run here: would take ~{s:.0f} s on this machine ({rounds} rounds x {tokens} tokens, "
                           f"from a {MIN_TOKENS}-token probe); run with -p {param}="
                           f"{suggest_budget(lesson_budget + choice.wanted_s)}")
    if choice.seconds > choice.budget_s:
        choice.over = (f"even the references ({', '.join(refs)}) alone take ~{choice.seconds:.0f} s here, "
                                 f"over the {choice.budget_s:.0f} s left of the budget: they ran anyway")
