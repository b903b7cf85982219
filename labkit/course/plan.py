"""The course's plan on this machine: what kind of machine it is and how long each lesson should take here, printed
before the first notebook starts, then each lesson's time set against its estimate.

A fixed preset takes 16 minutes on one CPU and 44 on another (issue 29), so a learner needs the expected time of
*this* machine. Each lesson's estimate comes from the best source there is, in this order:
1. its runs on this machine (same CPU kind, speed-deciding features, usable cores and GPUs), preset and
   parameters, the median of the last RECENT_RUNS: the runner stores every successful lesson's seconds as a record
   `course_times` (with the fingerprint, the estimate it had and where that came from, and the share of the CPU
   other processes used meanwhile); runs beside other load count only where no quiet run is stored;
2. the catalog's reference time (the ci preset on the reference machine closest to this one: catalog.REFERENCE's,
   a Zen 3 EPYC, whose times are `Lesson.reference_s`, or one of catalog.OTHER_REFERENCES, e.g. an AMX Xeon) scaled by
   notebook 01's profile of this machine: half of it by the fp32 matmul rate, half by the memory bandwidth, each
   against the reference's (when both sides' rates are known); on a machine with no profile yet, by the same
   probes run once before the first lesson (`quick_rates`, a few seconds), until notebook 01's profile replaces
   them (`replan`);
3. the reference time as it is, with a note saying it is not scaled and why.
A lesson with a time budget (`budget_s`, e.g. notebook 02) is expected to take at most its budget. A lesson that
runs over OVER_FACTOR times its estimate says so in the runner's last line for it.
"""

from __future__ import annotations

import datetime as _dt
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core import records
from labkit.core.load import LoadWatch
from labkit.course import catalog

TIMES = "course_times"  # the record of one lesson's run: its seconds, the machine and the estimate it had
OVER_FACTOR = 1.5  # a lesson that takes longer than this many times its estimate says so
RECENT_RUNS = 3  # a lesson's estimate here is the median of its last 3 runs: one run on a shared machine varies by
# up to 1.6x (notebook 01: 96 s in one make lab, 157 s in the next, same code, on an AVX2-only EPYC)
COMPUTE_SHARE = 0.5  # the share of a lesson's time that scales with the fp32 matmul rate (the rest: bandwidth)
FEATURES = (("avx2", "AVX2"), ("avx512", "AVX-512"), ("vnni", "VNNI"), ("avx512_bf16", "AVX512-BF16"), ("amx", "AMX"))


def machine(fp: dict | None = None) -> dict:
    """The machine kind from a fingerprint (labkit.core.hardware.fingerprint; taken now if None): the CPU model, the
    features that decide its speed (AVX2, AVX-512, VNNI, AVX512-BF16, AMX), its usable cores and its GPUs."""
    if fp is None:
        from labkit.core.hardware import fingerprint

        fp = fingerprint()
    isa = fp.get("isa", {})
    return {"cpu": fp.get("cpu", "?"), "avx2": bool(isa.get("avx2")), "avx512": bool(isa.get("avx512f")),
            "vnni": bool(isa.get("avx512_vnni") or isa.get("avx_vnni")), "avx512_bf16": bool(isa.get("avx512_bf16")),
            "amx": bool(isa.get("amx_bf16") or isa.get("amx_int8")), "cores": fp.get("usable_cores"),
            "gpus": [g.get("name", "?") for g in fp.get("gpus", [])]}


def machine_key(m: dict) -> str:
    """One string per machine kind: two machines with the same key run a lesson in about the same time."""
    feats = ",".join(k for k, _ in FEATURES if m.get(k)) or "none"
    return f"{m['cpu']}|{feats}|{m['cores']} cores|{'+'.join(m['gpus']) or 'no GPU'}"


def describe_machine(m: dict) -> str:
    feats = ", ".join(f"{label} {'yes' if m.get(k) else 'no'}" for k, label in FEATURES)
    return f"{m['cpu']}; {feats}; {m['cores']} usable cores; GPU: {', '.join(m['gpus']) or 'none'}"


def profile_rates(reports: Path, key: str) -> dict | None:
    """fp32 matmul GFLOP/s and best bandwidth GB/s from notebook 01's latest profile, if it was measured on a
    machine of this kind (a profile from another machine says nothing about this one)."""
    rec = records.latest(catalog.HARDWARE_PROFILE, Path(reports) / "results")
    if rec is None or machine_key(machine(rec["fingerprint"])) != key:
        return None
    probes = rec["metrics"].get("probes", {})
    p = probes.get(rec["metrics"].get("device", "cpu")) or probes.get("cpu") or {}
    fp32, bw = p.get("matmul_gflops", {}).get("fp32"), p.get("bandwidth_gbps", {}).get("best")
    return {"fp32_gflops": fp32, "bandwidth_gbps": bw, "from": PROFILE} if fp32 and bw else None


PROFILE = "notebook 01's profile"
QUICK = "a quick probe before the first lesson"


def quick_rates(run=None) -> dict | None:
    """This machine's fp32 matmul GFLOP/s and best bandwidth GB/s from notebook 01's probes run once at their
    default sizes (a few seconds), for a plan on a machine with no profile yet; None if they did not run.
    `run`: the probes' function (labkit.core.probes.run_probes; tests pass a fake)."""
    from labkit.core import probes

    run = run or probes.run_probes
    got = probes.summarize_probes(run(devices=("cpu",), dtypes=("fp32",), repeats=2, progress=False)).get("cpu", {})
    fp32, bw = got.get("matmul_gflops", {}).get("fp32"), got.get("bandwidth_gbps", {}).get("best")
    return {"fp32_gflops": fp32, "bandwidth_gbps": bw, "from": QUICK} if fp32 and bw else None


@dataclass
class Estimate:
    """A lesson's expected seconds here (None: nothing to go by), where they came from in words, and the kind of
    source: "measured here", "scaled", "reference" or "none"."""

    id: str
    notebook: str
    seconds: float | None
    source: str
    basis: str
    brief: str = ""  # the source in a few words, for the plan's table

    def short(self) -> str:
        return "no estimate" if self.seconds is None else f"expected ~{_span(self.seconds)}"


def _span(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _same(params: dict | None) -> str:
    return json.dumps(params or {}, sort_keys=True, default=str)


def reference_for(m: dict) -> dict:
    """The reference machine closest to `m` (machine()): the one with the same AMX, then AVX512-BF16, VNNI and
    AVX-512 (what changes a lesson's kernels most, in that order); catalog.REFERENCE unless another matches better."""
    order = [k for k, _ in reversed(FEATURES)]

    def score(ref: dict) -> tuple:
        feats = ref.get("features") or {}
        return tuple(bool(feats.get(k)) == bool(m.get(k)) for k in order)

    best = catalog.REFERENCE
    for ref in catalog.OTHER_REFERENCES:
        if score(ref) > score(best):
            best = ref
    return best


def reference_time(lesson: catalog.Lesson, reference: dict) -> float | None:
    """`lesson`'s seconds on `reference`: its own table of times, or the lesson's reference_s (catalog.REFERENCE)."""
    times = reference.get("times")
    return lesson.reference_s if times is None else times.get(lesson.id)


def estimate(lesson: catalog.Lesson, preset: str, params: dict | None, key: str, times: list[dict],
             rates: dict | None, reference: dict | None = None) -> Estimate:
    """The estimate of one lesson (see the module's docstring): `times` are the `course_times` records (oldest
    first), `rates` this machine's profile rates (profile_rates), `reference` the machine whose time is scaled
    (reference_for; default catalog.REFERENCE)."""
    reference = catalog.REFERENCE if reference is None else reference
    params = params or {}
    mine = [t for t in times if t["config"].get("lesson") == lesson.id and t["config"].get("preset") == preset
            and t["config"].get("machine_key") == key and _same(t["config"].get("params")) == _same(params)]
    budget = params.get("budget_s", lesson.budget_s if preset == "ci" else None)
    quiet = [t for t in mine if not t["metrics"].get("busy")]
    left_out = len(mine) - len(quiet) if quiet else 0
    mine = quiet or mine  # runs beside other load only where no quiet run is stored
    if mine:
        when = _dt.datetime.fromisoformat(mine[-1]["time"]).strftime("%Y-%m-%d %H:%M")
        recent = sorted(float(t["metrics"]["seconds"]) for t in mine[-RECENT_RUNS:])
        secs = statistics.median(recent)
        source = (f"its last run on this machine ({when} UTC)" if len(recent) == 1 else
                  f"the median of its last {len(recent)} runs on this machine ({recent[0]:.0f}-{recent[-1]:.0f} s, "
                  f"the last {when} UTC)")
        if left_out:
            source += f"; {left_out} run(s) beside other load left out"
        if isinstance(budget, (int, float)) and secs > budget:  # a run from before its budget, or over it
            return Estimate(lesson.id, lesson.notebook, float(budget), f"its budget_s={budget:.0f} (capping {source})",
                            "measured here", f"its budget_s={budget:.0f}")
        return Estimate(lesson.id, lesson.notebook, secs, source, "measured here", f"last run here, {when}"
                        + (f"; {left_out} beside other load left out" if left_out else ""))
    ref_s = reference_time(lesson, reference)
    if ref_s is None or preset != reference.get("preset"):
        return Estimate(lesson.id, lesson.notebook, None, f"no run on this machine and no {preset} reference time",
                        "none", "no run here, no reference")
    ref = float(ref_s)
    known = rates and reference.get("fp32_gflops") and reference.get("bandwidth_gbps")
    if known:
        factor = (COMPUTE_SHARE * reference["fp32_gflops"] / rates["fp32_gflops"]
                  + (1 - COMPUTE_SHARE) * reference["bandwidth_gbps"] / rates["bandwidth_gbps"])
        secs, basis, brief = ref * factor, "scaled", (f"reference x {factor:.2f} "
                                                      f"({'quick probe' if rates.get('from') == QUICK else 'profile'})")
        source = (f"the reference time {ref:.0f} s x {factor:.2f} (fp32 matmul {rates['fp32_gflops']:.0f} vs "
                  f"{reference['fp32_gflops']:.0f} GFLOP/s, bandwidth {rates['bandwidth_gbps']:.0f} vs "
                  f"{reference['bandwidth_gbps']:.0f} GB/s: {rates.get('from', PROFILE)} here against the "
                  "reference's)")
    else:
        secs, basis, brief = ref, "reference", "reference, not scaled"
        why = ("no notebook-01 profile of this machine yet" if not rates else
               "the reference machine's rates are not recorded")
        source = f"the reference time on {reference.get('machine', 'the reference machine')}, not scaled: {why}"
    if isinstance(budget, (int, float)) and secs > budget:
        secs, brief = float(budget), f"its budget_s={budget:.0f}"
        source = f"{brief} (capping {source})"
    return Estimate(lesson.id, lesson.notebook, secs, source, basis, brief)


@dataclass
class Plan:
    preset: str
    machine: dict
    key: str
    fingerprint: dict
    estimates: dict[str, Estimate] = field(default_factory=dict)
    rates: dict | None = None
    params: dict[str, dict] = field(default_factory=dict)  # each lesson's parameters, as the estimates took them
    reference: dict = field(default_factory=lambda: catalog.REFERENCE)  # the machine whose times are scaled
    quick_error: str | None = None  # why the quick probe gave no rates, when it failed

    @property
    def total_s(self) -> float:
        return sum(e.seconds for e in self.estimates.values() if e.seconds is not None)

    def lines(self) -> list[str]:
        """The plan as the runner prints it before the first notebook."""
        again = "; notebook 01 measures them again, in full" if (self.rates or {}).get("from") == QUICK else ""
        out = [f"Plan for preset {self.preset} on this machine: {describe_machine(self.machine)}",
               "  rates: " + (f"fp32 matmul {self.rates['fp32_gflops']:.0f} GFLOP/s, bandwidth "
                              f"{self.rates['bandwidth_gbps']:.0f} GB/s ({self.rates.get('from', PROFILE)}{again})"
                              if self.rates else
                              "no notebook-01 profile of this machine yet"
                              + (f"; {self.quick_error}" if self.quick_error else ""))]
        for e in self.estimates.values():
            t = "       ?" if e.seconds is None else f"{_span(e.seconds):>8}"
            out.append(f"  {e.notebook:<26}{t}  ({e.brief})")
        unknown = sum(e.seconds is None for e in self.estimates.values())
        out.append(f"  in all ~{_span(self.total_s)}" + (f", and {unknown} with no estimate" if unknown else ""))
        if any(e.basis in ("reference", "scaled") for e in self.estimates.values()):
            ref = self.reference
            out.append(f"  reference: the {ref['preset']} preset's times on {ref['machine']} ({ref['source']})")
        unscaled = next((e.source for e in self.estimates.values() if e.basis == "reference"), None)
        if unscaled:
            out.append(f"  not scaled to this machine: {unscaled.rsplit(': ', 1)[-1].rstrip(')')}")
        return out


def make_plan(ids: list[str], preset: str, params_by_id: dict[str, dict], reports: Path,
              fp: dict | None = None, quick=None) -> Plan:
    """The plan of the lessons `ids` (catalog ids) with their parameters, from what `reports` holds. `quick`: a
    function giving this machine's rates (quick_rates) where no profile of it is stored and a lesson would be
    scaled by them; None: such lessons keep the reference time as it is."""
    if fp is None:
        from labkit.core.hardware import fingerprint

        fp = fingerprint()
    m = machine(fp)
    key = machine_key(m)
    times = records.read_records(Path(reports) / "results", TIMES)
    rates, ref, quick_error = profile_rates(reports, key), reference_for(m), None
    if rates is None and quick is not None and any(
            estimate(catalog.lesson(i), preset, params_by_id.get(i), key, times, None, ref).basis == "reference"
            for i in ids):
        try:
            rates = quick()
        except Exception as e:  # a plan is advice: a probe that fails leaves the reference times unscaled, it says so
            quick_error = f"the quick probe failed ({type(e).__name__}: {e})"
    plan = Plan(preset, m, key, fp, rates=rates, params={i: params_by_id.get(i) or {} for i in ids}, reference=ref,
                quick_error=quick_error)
    for i in ids:
        plan.estimates[i] = estimate(catalog.lesson(i), preset, params_by_id.get(i), key, times, rates, ref)
    return plan


def replan(plan: Plan, reports: Path, after: str) -> list[str]:
    """After lesson `after` ran: if notebook 01's profile of this machine is now there (or changed), the estimates
    of the lessons still to run that came from the reference time are scaled by it. Returns the lines to print
    (none when nothing changed). Estimates from an earlier run here are kept: a measured time beats a scaled one."""
    rates = profile_rates(reports, plan.key)
    if not rates or rates == plan.rates:
        return []
    ids = list(plan.estimates)
    later = ids[ids.index(after) + 1:] if after in ids else []
    plan.rates = rates
    out = []
    for i in later:
        old = plan.estimates[i]
        if old.basis not in ("reference", "scaled"):
            continue
        new = estimate(catalog.lesson(i), plan.preset, plan.params.get(i), plan.key, [], rates, plan.reference)
        plan.estimates[i] = new
        if new.seconds != old.seconds:
            out.append(f"  {new.notebook:<26}{_span(new.seconds):>8}  ({new.brief}; was {_span(old.seconds)})")
    if out:
        out.insert(0, f"Re-planned from notebook 01's profile of this machine (fp32 matmul {rates['fp32_gflops']:.0f} "
                      f"GFLOP/s, bandwidth {rates['bandwidth_gbps']:.0f} GB/s):")
        out.append(f"  in all ~{_span(plan.total_s)}")
    return out


def load_words(load: dict | None) -> str:
    """Others' share of the CPU while a lesson ran (labkit.core.load.LoadWatch.read), in words; "" if unknown."""
    share = (load or {}).get("others_cpu_share")
    if share is None:
        return ""
    return (f"others used {share:.0%} of the CPU meanwhile" if load.get("busy") else
            "the machine was otherwise idle")


def outcome_line(est: Estimate, seconds: float, load: dict | None = None) -> str:
    """What a lesson took against its estimate, and the load it ran beside (`load`: LoadWatch.read of the run);
    over OVER_FACTOR times the estimate, the line says so in capitals, and names the load when it was busy."""
    beside = load_words(load)
    if est.seconds is None or est.seconds <= 0:
        return f"took {seconds:.0f} s (no estimate: {est.source})" + (f"; {beside}" if beside else "")
    ratio = seconds / est.seconds
    line = f"took {seconds:.0f} s against an estimate of {est.seconds:.0f} s ({ratio:.2f}x)"
    if ratio > OVER_FACTOR:
        why = (f"; {beside}: the likely cause, as the estimate assumes an idle machine" if (load or {}).get("busy")
               else "")
        return f"OVER ITS ESTIMATE: {line}, more than {OVER_FACTOR}x; the estimate came from {est.source}{why}"
    return line + (f"; {beside}" if beside else "")


def summary_line(runs) -> str:
    """The course's last line: how many lessons ran and failed, the time in all against the estimates of the lessons
    that had one, and the busiest lesson's load. `runs`: the runner's NotebookRun list."""
    failed = sum(bool(r.error) for r in runs)
    total = sum(r.seconds for r in runs)
    line = f"{len(runs) - failed} notebook(s) ran, {failed} failed, {total:.0f} s in all" + (
        f" ({total / 60:.1f} min)" if total >= 90 else "")
    known = [r for r in runs if not r.error and r.estimate_s]
    if known:
        took, est = sum(r.seconds for r in known), sum(r.estimate_s for r in known)
        part = "" if len(known) == len(runs) else f" for the {len(known)} with an estimate"
        line += f"; {took:.0f} s against an estimate of {est:.0f} s{part} ({took / est:.2f}x)"
    shares = [(r.others_cpu_share, r.name) for r in runs if r.others_cpu_share is not None]
    if shares:
        share, name = max(shares)
        line += ("; the machine was otherwise idle throughout" if share <= LoadWatch.BUSY_ABOVE else
                 f"; others used up to {share:.0%} of the CPU during a lesson ({name})")
    return line


def record_time(plan: Plan, est: Estimate, seconds: float, params: dict | None, reports: Path,
                load: dict | None = None) -> Path:
    """Store one successful lesson's seconds with the machine, the estimate it had and the load it ran beside
    (`load`: LoadWatch.read; the record `course_times`): the next plan on this machine starts from it, from the
    runs on a quiet machine where there are any."""
    config = {"lesson": est.id, "notebook": est.notebook, "preset": plan.preset, "params": params or {},
              "machine_key": plan.key, "machine": plan.machine}
    load = load or {}
    metrics = {"seconds": seconds, "estimate_s": est.seconds, "estimate_source": est.source,
               "estimate_basis": est.basis, "x_estimate": seconds / est.seconds if est.seconds else None,
               "others_cpu_share": load.get("others_cpu_share"), "busy": bool(load.get("busy"))}
    return records.write_record(records.make_record(TIMES, config, metrics, fingerprint=plan.fingerprint),
                                Path(reports) / "results")
