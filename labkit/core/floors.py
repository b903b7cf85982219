"""A floor is a floor: the one place every lesson turns a measured time and its roofline floor into the
"fraction of the floor" it writes, and where a measurement that beats its floor is explained instead of shown.

A roofline floor is work / rate: FLOPs over a matmul rate, bytes over a bandwidth. The rates come from probes
(notebook 01's profile, or matmuls timed beside the measurement); a measured time more than `LIMIT` (5%) under
its floor therefore means a rate was wrong (too low: taken while a neighbour was busy, or at a shape or through a
kernel the path does not run). `of_floor` then names that rate, re-derives the floor from the fastest rate timed in
the same run where one is given (else takes the measurement itself as the floor: a lower bound on what the machine
can do) and returns the reason to store beside the fraction (`fields`: `<key>_reason`), so that no record or table
shows a floor that was beaten without saying why. `floor_problems` reads a reports folder and lists every stored
fraction above `LIMIT` without its reason (the course's tests run it after the notebooks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LIMIT = 1.05  # a measurement may reach 5% past its floor (timer and rounding noise); beyond that a rate was wrong
UNITS = {"FLOP/s": (1e9, "GFLOP/s"), "B/s": (1e9, "GB/s")}


@dataclass(frozen=True)
class Rate:
    """One rate a floor divides by: `work` (FLOPs or bytes of the measured step) at `per_s` (FLOP/s or B/s).
    `name` says which kernel or probe it is ("fp32 matmul", "memory bandwidth"), `source` where it was taken."""

    name: str
    per_s: float
    work: float
    unit: str = "FLOP/s"
    source: str = "notebook 01's profile"

    @property
    def seconds(self) -> float:
        return self.work / self.per_s

    def words(self, per_s: float | None = None) -> str:
        """The rate (or `per_s` in its unit) as a person reads it: "81.2 GFLOP/s", "12.5 GB/s"."""
        scale, unit = UNITS.get(self.unit, (1.0, self.unit))
        return f"{(self.per_s if per_s is None else per_s) / scale:,.1f} {unit}"


def rates_of(floor, compute: str = "fp32 matmul", source: str = "notebook 01's profile") -> list[Rate]:
    """The rates behind a `labkit.core.roofline.Floor`: its bandwidth (bytes / memory_s) and, where the card had
    one, its matmul rate (flops / compute_s), named `compute` (the kernel the measured path really calls)."""
    out = [Rate("memory bandwidth", floor.bytes / floor.memory_s, floor.bytes, "B/s", source)]
    if floor.compute_s:
        out.append(Rate(compute, floor.flops / floor.compute_s, floor.flops, "FLOP/s", source))
    return out


@dataclass(frozen=True)
class FloorFraction:
    """A measured time against its floor: `fraction` = floor_s / measured_s (1.0: as fast as the floor allows),
    `floor_s` the floor the fraction uses (re-derived when the stated one was beaten), `stated_floor_s` the floor
    the rates gave, `wrong` the rates that were too low (empty when none), `reason` why the floor was re-derived
    (None when the stated floor held)."""

    fraction: float
    floor_s: float
    measured_s: float
    stated_floor_s: float
    wrong: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def stated_fraction(self) -> float:
        return self.stated_floor_s / self.measured_s

    def fields(self, key: str = "fraction_of_floor") -> dict:
        """The fraction under `key`, and its reason beside it (`<key>_reason`) where the floor was re-derived."""
        return {key: self.fraction, **({f"{key}_reason": self.reason} if self.reason else {})}


def of_floor(measured_s: float, rates: Sequence[Rate] | object, *, fastest: Mapping[str, float] | None = None,
             combine: str = "max", compute: str = "fp32 matmul", source: str = "notebook 01's profile",
             note: str | None = None, limit: float = LIMIT) -> FloorFraction:
    """The fraction of its floor a measured time reached, the floor re-derived when the measurement beat it.

    `rates`: the Rates the floor was built from (or a roofline Floor: `rates_of(floor, compute, source)`); the
    floor is the largest of their times (`combine="max"`, the roofline) or their sum ("sum": parts that run one
    after another, e.g. a trace's prefills then its decode steps). `fastest`: {rate name: per second} timed in the
    same run (matmuls beside the stages, or the best any row of this run's table reached). `note`: a warning about
    the source (planner.profile_note), added to the reason.

    Above `limit` (the measured time beat the floor by more than 5%), every rate whose time alone exceeds the
    measurement (for a sum, else the largest part) is wrong; each is raised to the fastest rate of the same name
    timed in the run, and if the floor is still beaten, the measurement itself is taken as the floor (fraction 1)."""
    if measured_s <= 0:
        raise ValueError(f"a measured time must be positive, got {measured_s!r}")
    if not isinstance(rates, Sequence):
        rates = rates_of(rates, compute, source)
    if not rates:
        raise ValueError("a floor needs at least one rate")
    if combine not in ("max", "sum"):
        raise ValueError(f"combine must be 'max' or 'sum', got {combine!r}")

    def total(rs: Iterable[Rate]) -> float:
        times = [r.seconds for r in rs]
        return max(times) if combine == "max" else sum(times)

    stated = total(rates)
    if stated / measured_s <= limit:
        return FloorFraction(stated / measured_s, stated, measured_s, stated)
    wrong = [r for r in rates if r.seconds > measured_s] or [max(rates, key=lambda r: r.seconds)]
    fastest = dict(fastest or {})
    fixed = [Rate(r.name, max(r.per_s, fastest.get(r.name, 0.0)), r.work, r.unit, "this run") if r in wrong else r
             for r in rates]
    floor = total(fixed)
    needed = "; ".join(f"the {r.name} rate ({r.words()}, {r.source}) is lower than this measurement needed "
                       f"({r.words(r.work / measured_s)} at least)" for r in wrong)
    why = (f"measured {_ms(measured_s)} beat its floor of {_ms(stated)} ({stated / measured_s:.2f}x "
           f"of it): {needed}, so that rate was wrong (measured while the machine was busy, or at another shape or "
           "kernel than this path runs)")
    if floor / measured_s <= limit and floor < stated:
        used = ", ".join(f"{r.name} {r.words(fastest[r.name])}" for r in wrong if r.name in fastest)
        why += f"; floor re-derived from the fastest rate timed in this run ({used}): {_ms(floor)}"
    else:
        floor = measured_s
        why += ("; no rate timed in this run reaches it, so the floor is taken as the measured time itself "
                "(a lower bound on what the machine can do)")
    if note:
        why += f" ({note.removeprefix('note: ')})"
    return FloorFraction(floor / measured_s, floor, measured_s, stated, tuple(r.name for r in wrong), why)


def _ms(seconds: float) -> str:
    """Milliseconds with three significant digits and no e-notation: "0.0123 ms", "12.3 ms", "1,770 ms"."""
    ms = seconds * 1e3
    return f"{ms:,.0f} ms" if ms >= 100 else f"{float(f'{ms:.3g}'):g} ms"


def fastest_rates(rows: Iterable[tuple[str, float, float]]) -> dict[str, float]:
    """{rate name: the highest work / seconds} of (name, work, measured seconds) triples: the fastest each rate
    was seen to run in this run, for `of_floor(fastest=...)`."""
    out: dict[str, float] = {}
    for name, work, seconds in rows:
        if seconds and seconds > 0 and work:
            out[name] = max(out.get(name, 0.0), work / seconds)
    return out


def of_floors(measured: Sequence[float], rates: Sequence[Sequence[Rate] | object], *,
              fastest: Mapping[str, float] | None = None, compute: str | Sequence[str] = "fp32 matmul",
              source: str = "notebook 01's profile", note: str | None = None) -> list[FloorFraction]:
    """`of_floor` for every row of one table measured in one run (roofline floors: the largest of their times):
    each row's step did all its work within its measured time, so work / time is a rate the machine reached for
    every rate of the row; the fastest of each over the table (with `fastest`'s, timed beside it) is what a beaten
    floor is re-derived from. `compute`: the matmul rate's name, one for all rows or one per row."""
    names = [compute] * len(measured) if isinstance(compute, str) else list(compute)
    given = [r if isinstance(r, Sequence) else rates_of(r, n, source) for r, n in zip(rates, names, strict=True)]
    best = fastest_rates((r.name, r.work, t) for rs, t in zip(given, measured, strict=True) for r in rs)
    for k, v in (fastest or {}).items():
        best[k] = max(best.get(k, 0.0), v)
    return [of_floor(t, rs, fastest=best, note=note) for rs, t in zip(given, measured, strict=True)]


def reasons(rows, label: str | Sequence[str] | None = None) -> list[str]:
    """Every re-derived floor's reason in a table (a DataFrame or a list of dicts), one line each: "<label>,
    <fraction key>: <reason>" (`label`: the column(s) naming a row), to print below a table that shows the
    fractions but not the long reasons."""
    recs = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    keys = [label] if isinstance(label, str) else list(label or [])
    out = []
    for r in recs:
        name = ", ".join(str(r.get(k)) for k in keys)
        for k, v in r.items():
            if str(k).endswith("_reason") and isinstance(v, str) and v:
                out.append(f"{name + ', ' if name else ''}{str(k).removesuffix('_reason')}: {v}")
    return out


def shown(df):
    """A table without its `*_reason` columns (print them with `reasons` below it)."""
    return df.drop(columns=[c for c in df.columns if str(c).endswith("_reason")])


# ---------------------------------------------------------------- what a record may hold

def _is_fraction(key: str) -> bool:
    k = key.lower().replace(" ", "_")
    return not k.endswith("_reason") and ("fraction" in k or "of_floor" in k or "of_ceiling" in k)


def _walk(obj, where: str) -> Iterable[tuple[str, dict]]:
    if isinstance(obj, dict):
        yield where, obj
        for k, v in obj.items():
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{where}[{i}]")


def record_problems(record: dict, limit: float = LIMIT) -> list[str]:
    """Every fraction of a floor (a key holding "fraction", "of_floor" or "of_ceiling") in `record` that is above
    `limit` with no reason beside it (`<key>_reason`, or `fraction_reason` in the same dict), as 'where: value'."""
    out = []
    name = record.get("_path") or record.get("experiment", "record")
    for where, d in _walk(record.get("metrics", record), str(name)):
        for k, v in d.items():
            if not _is_fraction(str(k)) or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if v > limit and not (d.get(f"{k}_reason") or d.get("fraction_reason")):
                out.append(f"{where}.{k} = {v:.3f} (above {limit} of its floor, with no '{k}_reason' beside it)")
    return out


def floor_problems(root: Path | str, limit: float = LIMIT) -> list[str]:
    """`record_problems` of every record under a reports folder (`root`/results, or `root` itself when it holds
    the experiments' folders)."""
    from labkit.core.records import read_records

    root = Path(root)
    results = root / "results" if (root / "results").is_dir() else root
    return [p for rec in read_records(results) for p in record_problems(rec, limit)]
