"""The ledger (notebook 08): every claim judged from the latest records of the lessons that measure it, counted,
said in plain words and drawn.

The judges in the sibling modules take figures or one record; this module knows which lesson's record each claim
reads (SOURCES, with the record names from labkit.course.catalog) and turns a record into its judge's inputs, so a
lesson and the ledger judge the same numbers the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from labkit.core.records import latest
from labkit.course import catalog
from labkit.course.claims.compression import c5, c6, c7, c13
from labkit.course.claims.kernels import kernels_verdicts
from labkit.course.claims.measuring import c1, c2, c4, c15, c17
from labkit.course.claims.parallelism import c3, c8, c14
from labkit.course.claims.serving import c9, c12, c16
from labkit.course.claims.verdict import (
    CLAIMS,
    INCONCLUSIVE,
    NOT_MEASURABLE,
    NOT_MEASURED,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    STATUSES,
    Verdict,
    machine_gpus,
    not_measured,
    on_hardware,
)


def _tables(record: dict | None):
    """Notebook 06's tables from its record, as kernels_verdicts takes them (None without them)."""
    if not record or "attention" not in record.get("metrics", {}):
        return None
    import pandas as pd

    m = record["metrics"]
    return (pd.DataFrame(m["attention"]), pd.DataFrame(m["prefill"]), pd.DataFrame(m["compile"]),
            pd.DataFrame(m["precision"]), m.get("empty_cache", []))


def _kernels(record: dict | None) -> list[Verdict] | None:
    """C10, C11, C15 recomputed from notebook 06's record (its tables, as the lesson judged them)."""
    got = _tables(record)
    if got is None:
        return None
    m = record["metrics"]
    return kernels_verdicts(*got, record["config"].get("device", "cpu"), m.get("a100_length_for_3x"), record)


def _c10_record(record: dict | None) -> Verdict:
    got = _kernels(record)
    return got[0] if got else not_measured("C10")


def _c11_record(record: dict | None) -> Verdict:
    got = _kernels(record)
    return got[1] if got else not_measured("C11")


def _c15_record(record: dict | None, base: dict | None = None) -> Verdict:
    """C15 from every cold/warm ratio measured: notebook 06's (compiled paths, flex, eager) and notebook 00's
    eager generate, each held against its own run's noise floor (notebook 00 stores one), judged together."""
    m = (base or {}).get("metrics", {})
    ours = {f"notebook 00: eager generate ({k})": m[f"cold_over_warm_{k}"] for k in ("E2E", "TTFT")
            if m.get(f"cold_over_warm_{k}")}
    ratios = {}
    got = _tables(record)
    if got is not None:
        from labkit.lessons import kernels as kx

        ratios.update(kx.verdict_inputs(*got)["cold_over_warm"])
    ratios.update(ours)
    if not ratios:
        return not_measured("C15")
    return c15(ratios, record if got is not None else base, noise={k: m.get("noise_floor") for k in ours})


def _c17_record(record: dict | None) -> Verdict:
    if not record:
        return not_measured("C17")
    return c17(record["config"], repeats=int(record["metrics"].get("steady_requests", 0)),
               fingerprint_stored=bool(record.get("fingerprint")), record=record)


def _parallel(record: dict | None) -> tuple[dict, int] | None:
    """(measured weight fractions per split, the TP degree) from notebook 04's record."""
    if not record or "results" not in record.get("metrics", {}):
        return None
    from labkit.lessons.parallelism import split_fractions

    return split_fractions(record["metrics"]["results"]), len(record["metrics"]["results"]["memory"])


def _c7_record(record: dict | None) -> Verdict:
    """C7 from notebook 03's record: the two 40% cuts' figures as the lesson judged them."""
    got = (record or {}).get("metrics", {}).get("c7")
    return c7(got["magnitude"], got["structured"], record) if got else not_measured("C7")


def _c3_record(record: dict | None) -> Verdict:
    got = _parallel(record)
    return c3(got[0][f"TP={got[1]}"], tp=got[1], record=record) if got else not_measured("C3")


def _c8_record(record: dict | None) -> Verdict:
    got = _parallel(record)
    return c8(got[0], record=record) if got else not_measured("C8")


def _c14_record(record: dict | None) -> Verdict:
    rows = (record or {}).get("metrics", {}).get("granularity")
    return c14(rows, record=record) if rows else not_measured("C14")


# claim -> (the lessons whose latest main records it reads, the function that judges them, taking one record or
# None per lesson). The record names come from labkit.course.catalog, the table the lessons save under.
SOURCES: dict[str, tuple[tuple[str, ...], Callable[..., Verdict]]] = {
    "C1": (("01",), c1), "C2": (("01",), c2), "C4": (("01",), c4),
    "C3": (("04",), _c3_record), "C8": (("04",), _c8_record), "C14": (("04",), _c14_record),
    "C7": (("03",), _c7_record),
    "C5": (("02",), c5), "C6": (("02",), c6), "C13": (("02",), c13),
    "C9": (("05",), c9), "C16": (("05",), c16),
    "C10": (("06",), _c10_record), "C11": (("06",), _c11_record), "C15": (("06", "00"), _c15_record),
    "C12": (("07",), c12), "C17": (("00",), _c17_record),
}


def source_records(claim: str) -> tuple[str, ...]:
    """The record names a claim is judged from, in the order its judge takes them."""
    return tuple(catalog.lesson(i).record for i in SOURCES[claim][0])


def ledger(root=None) -> list[Verdict]:
    """Every claim's verdict from the latest records under `root` (default: reports/results): a claim whose
    lesson has not run, or has not been written, is "not measured yet", never guessed."""
    out = []
    for cid in CLAIMS:
        if cid not in SOURCES:
            out.append(Verdict(cid, NOT_MEASURED, f"notebook {CLAIMS[cid].notebook} does not measure it yet"))
            continue
        recs = [latest(e, root) for e in source_records(cid)]
        out.append(SOURCES[cid][1](*recs) if any(r is not None for r in recs) else not_measured(cid))
    return out


def counts(verdicts: list[Verdict]) -> dict[str, int]:
    """How many verdicts have each status, in STATUSES order."""
    return {s: sum(v.status == s for v in verdicts) for s in STATUSES}


def holds_here(v: Verdict) -> bool:
    """A reproduced verdict about this kind of hardware: any machine for most claims; for a claim about named
    hardware (an A100, a V100, a CUDA GPU), only where the machine it was measured on has it."""
    return v.status == REPRODUCED and on_hardware(v.claim, machine_gpus(v.machine))


def what_to_trust(verdicts: list[Verdict]) -> list[str]:
    """The ledger in plain words, one line per status that occurs: which promises hold here (reproduced, about
    this kind of hardware), which do not, which the run could not tell, which this machine cannot test, which
    are still to be measured."""
    words = {REPRODUCED: "Holds on this machine", PARTLY: "Holds in part (read the evidence for which part)",
             NOT_REPRODUCED: "Does not hold here, as measured",
             INCONCLUSIVE: "Inconclusive here (inside the run's noise, or rounds disagreeing: run it again on a "
                           "quieter machine)",
             NOT_MEASURABLE: "Cannot be tested on this hardware",
             NOT_MEASURED: "Not measured yet (run the lesson named)"}
    groups: dict[str, list[Verdict]] = {s: [v for v in verdicts if v.status == s] for s in STATUSES}
    elsewhere = [v for v in groups[REPRODUCED] if not holds_here(v)]
    groups[REPRODUCED] = [v for v in groups[REPRODUCED] if holds_here(v)]
    out = []
    for status in STATUSES:
        if groups[status]:
            out.append(f"{words[status]}: " + "; ".join(f"{v.claim} ({CLAIMS[v.claim].words})"
                                                       for v in groups[status]) + ".")
        if status == REPRODUCED and elsewhere:
            out.append("Reproduced, but not on the hardware the claim is about (so it does not count as holding "
                       "here): " + "; ".join(f"{v.claim} ({CLAIMS[v.claim].hardware})" for v in elsewhere) + ".")
    return out


COLOURS = {REPRODUCED: "tab:green", PARTLY: "tab:olive", NOT_REPRODUCED: "tab:red", INCONCLUSIVE: "tab:orange",
           NOT_MEASURABLE: "tab:grey", NOT_MEASURED: "lightgrey"}


def plot_counts(verdicts: list[Verdict]):
    """A bar per status: how many of the guide's claims have it on this machine (notebook 08's figure)."""
    import matplotlib.pyplot as plt

    n = counts(verdicts)
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.barh(list(n), list(n.values()), color=[COLOURS[s] for s in n])
    for y, v in enumerate(n.values()):
        ax.text(v + 0.1, y, str(v), va="center")
    ax.invert_yaxis()
    ax.set(xlabel="claims of the guide", title=f"The guide's {len(verdicts)} claims on this machine")
    return fig
