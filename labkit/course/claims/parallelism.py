"""The claims about splitting a model over devices (notebook 04): C3 (13B needs two A100s), C8 (3D parallelism
above 32B) and C14 (too fine-grained TP costs more than it saves).

Judged from the planner's memory plans on reference cards together with the splits and collectives the lesson
measured; the planner is imported inside each judge so importing the ledger stays light.
"""

from __future__ import annotations

from labkit.course.claims.verdict import (
    NOT_MEASURABLE,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    Check,
    Verdict,
    combine,
    judged,
    not_measured,
)

# ---------------------------------------------------------------- notebook 04 (parallelism): C3, C8, C14

SPLIT_TOLERANCE = 0.05  # C3/C8: a split "holds 1/n of the weights per rank" within 5 points of 1/n
C3_MODEL = "llama-2-13b"


def c3(tp_weight_fraction: float | None, tp: int = 2, card: str = "A100-40GB", dtype: str = "fp16",
       context: int = 4096, batch: int = 1, link: str | None = None, record: dict | None = None) -> Verdict:
    """C3 (13B needs two A100s with NVLink TP) from the planner (memory_plan, cards_needed) for 13B on `card`'s
    datasheet, beside the fraction of the weights one TP rank was measured to hold here (the planner assumes
    1/tp). Not reproduced if one card holds it: bytes against capacity refute it on any machine. Otherwise the
    planner agrees, but only A100s can show it: not measurable here, never "reproduced" from a datasheet.
    `link`: a sentence on what the interconnect must do (speed)."""
    from labkit.core.planner import cards_needed, max_batch, memory_plan, usable_bytes
    from labkit.core.roofline import GiB
    from labkit.core.roofline import card as ref_card

    if tp_weight_fraction is None:
        return not_measured("C3")
    hw = ref_card(card)
    plan = memory_plan(C3_MODEL, dtype, context, batch)
    n = cards_needed(plan, hw)
    split_ok = abs(tp_weight_fraction - 1 / tp) <= SPLIT_TOLERANCE
    head = (f"13B {dtype} at {context:,} tokens x batch {batch} needs {plan.total / GiB:.1f} GiB; one {card} has "
            f"{usable_bytes(hw) / GiB:.1f} GiB usable (datasheet)")
    if n == 1:
        more = memory_plan(C3_MODEL, "fp32", context, batch)
        found = Check("cards the planner needs", f"1x {card}", "guide at least 2 A100s", NOT_REPRODUCED,
                      f"one card holds it (up to batch {max_batch(C3_MODEL, dtype, context, hw)}); two are needed "
                      f"for fp32 ({cards_needed(more, hw) or '>8'}x) or larger batches")
    else:
        found = Check("cards the planner needs", f"{n or 'more than 8'}x {card}", "guide at least 2 A100s",
                      NOT_MEASURABLE, f"it takes {n or 'more than 8'} cards by datasheet arithmetic; showing it "
                      "needs the cards")
    tail = (f"; measured here instead, a TP={tp} rank holds {tp_weight_fraction:.2f} of the weights "
            f"({'as' if split_ok else 'not what'} the planner assumes, 1/{tp})")
    if link:
        tail += f". NVLink is about speed, not memory: {link}"
    return judged("C3", [found], head=head, tail=tail, measured=f"{n or '>8'}x {card} ({dtype})", record=record)


C8_MODELS = ("qwen2.5-32b", "llama-2-70b")
NODE = 8  # cards in one server: TP stays inside a node (its fast links), PP and DP cross nodes


def c8(split_fractions: dict[str, float] | None, models: tuple[str, ...] = C8_MODELS, dtype: str = "fp16",
       context: int = 4096, batch: int = 1, cards: list[str] | None = None, record: dict | None = None) -> Verdict:
    """C8 (above 32B, combine data, tensor and pipeline parallelism) from the planner: on which reference cards
    (datasheets) the 32B and 70B models need more than one 8-card node, i.e. PP across nodes on top of TP. DP
    never helps memory (a replica holds everything: `split_fractions` says what was measured). Not reproduced
    if TP inside one node holds both on every card (arithmetic refutes it anywhere); otherwise the planner
    agrees on some cards, which only several GPU servers can show: not measurable here."""
    from labkit.core.planner import cards_needed, memory_plan, supports
    from labkit.core.roofline import REFERENCE_CARDS
    from labkit.core.roofline import card as ref_card

    if not split_fractions:
        return not_measured("C8")
    hws = [ref_card(c) for c in cards] if cards else list(REFERENCE_CARDS.values())
    within, beyond, per_model = [], [], []
    for m in models:
        plan = memory_plan(m, dtype, context, batch)
        fits = []
        for hw in hws:
            if supports(hw, dtype):
                n = cards_needed(plan, hw, max_cards=NODE)
                (within if n else beyond).append((m, hw.name))
                fits.append(f"{hw.name} {n}x" if n else f"{hw.name} >{NODE}x (PP across nodes)")
        per_model.append(f"{m}: " + ", ".join(fits))
    shown = f"{len(beyond)} of {len(within) + len(beyond)}"
    found = Check("model and card pairs that outgrow one node", shown, "guide: 3D above 32B",
                  NOT_MEASURABLE if beyond else NOT_REPRODUCED,
                  "by datasheet arithmetic; showing it needs several GPU servers" if beyond else
                  f"TP inside one {NODE}-card node holds every model on every card")
    measured = ", ".join(f"{k} {v:.2f}" for k, v in split_fractions.items())
    head = (f"fewest cards with TP inside one {NODE}-card node ({dtype}, {context:,} tokens x batch {batch}): "
            + "; ".join(per_model))
    tail = f". DP adds throughput, never memory: measured weights per rank as a fraction of the model: {measured}"
    return judged("C8", [found], head=head, tail=tail, measured=f"{shown} need 3D", record=record)


def _c14_row(r: dict) -> str:
    if r["compute saved ms"] > 0:
        saved = f"saves {r['compute saved ms']:.2f} ms"
    else:  # the split compute alone is slower than one rank's whole: per-operation overhead, not arithmetic
        saved = f"saves nothing (TP compute {r['TP compute ms']:.2f} ms > one rank's {r['one rank ms']:.2f} ms)"
    return f"h={r['hidden']} {saved}, adds {r['collectives ms']:.2f} ms"


def _c14_phase(phase: str, rs: list[dict]) -> Check:
    """One phase's sweep, coarsest split first: does communication come to outweigh the compute saved?"""
    def costs(r: dict) -> bool:
        return r["collectives ms"] >= r["compute saved ms"]

    fine = rs[-1]
    shown = (f"collectives {fine['collectives ms']:.2f} ms against {fine['compute saved ms']:.2f} ms saved at the "
             f"finest split (hidden {fine['hidden']})")
    bar = "guide: communication outweighs the saving when too fine"
    if not costs(rs[0]) and costs(fine):
        first = next(r for r in rs if costs(r))
        return Check(phase, shown, bar, REPRODUCED, f"TP pays at hidden {rs[0]['hidden']}, costs from hidden "
                     f"{first['hidden']} down")
    if all(costs(r) for r in rs):
        return Check(phase, shown, bar, PARTLY, "at every size measured: the threshold lies higher")
    return Check(phase, shown, bar, NOT_REPRODUCED, "even the finest split saves more than its collectives cost")


def c14(rows: list[dict] | None, record: dict | None = None) -> Verdict:
    """C14 (too fine-grained TP costs more in communication than it saves) from the granularity sweep: rows with
    "hidden", "phase", "compute saved ms", "collectives ms", "TP compute ms" and "one rank ms"
    (parallel_experiment.granularity_rows). Per phase: reproduced if TP pays at the coarsest split and the
    collectives outweigh the saving at the finest; partly if they outweigh it at every size measured (the
    threshold lies above them); not reproduced if the finest split still pays. The best phase decides."""
    if not rows:
        return not_measured("C14")
    phases: dict[str, list[dict]] = {}
    for r in rows:
        phases.setdefault(r["phase"], []).append(r)
    checks, parts = [], []
    for phase, rs in phases.items():
        rs = sorted(rs, key=lambda r: -r["hidden"])
        parts.append(f"{phase}: " + ", ".join(_c14_row(r) for r in rs))
        checks.append(_c14_phase(phase, rs))
    return judged("C14", checks, tail=". " + ". ".join(parts), record=record,
                  measured="; ".join(f"{c.what}: {c.why}" for c in checks), rule=lambda cs: combine(cs, any_of=True))
