"""Notebook 04's sentences, built from this run's numbers ("What this means", why TP is slower or not, what link
two GPUs need), so that the words cannot contradict the tables on another machine.
"""

from __future__ import annotations

from labkit.core.floors import reasons
from labkit.core.models import ShapeSpec
from labkit.core.units import MiB, than
from labkit.lessons.parallelism.config import ONE_SHARE
from labkit.lessons.parallelism.tables import allreduce_time, split_fractions


def _row(table, phase: str, prefix: str):
    g = table[(table["phase"] == phase) & table["run"].str.startswith(prefix)]
    return None if g.empty else g.iloc[0]


def _link(row: dict, prefix: str) -> float:
    """A datasheet link's column of an interconnect row (ms), by the start of its name."""
    return next(v for k, v in row.items() if k.startswith(prefix))


def direction(words: str) -> str | None:
    """"faster" / "slower" (or a Ratio.words' other pair: "more ..." / "less ...") from a Ratio.words() text, None
    when it is inconclusive: what a sentence about it may claim."""
    if not isinstance(words, str) or words.startswith("inconclusive"):
        return None
    return words.split("x ", 1)[1].split()[0] if "x " in words else None


def floor_notes(table, spec: ShapeSpec, layers: int, hw, prompt_len: int, new_tokens: int) -> str:
    """Why each phase of one process on the whole machine lands where it does against its roofline floor: the
    FLOP/s and the weight bytes/s it reached, next to the profile's peak and bandwidth; where it beat the floor
    the profile gave, the reason the floor was re-derived (labkit.core.floors), never a fraction above 1."""
    from labkit.core.roofline import decode_floor, prefill_floor

    floors = {"prefill": prefill_floor(spec, "fp32", hw, prompt_len, 1, layers),
              "decode": decode_floor(spec, "fp32", hw, prompt_len + new_tokens // 2, 1, layers)}
    out = []
    for phase, f in floors.items():
        row = table[table["phase"] == phase].iloc[0]
        t = row["ms"] / 1e3
        gflops, gbps = f.flops / t / 1e9, f.bytes / t / 1e9
        s = (f"{phase}, {row['run']}: {row['fraction of floor']:.0%} of its {f.bound}-bound floor; it ran at "
             f"{gflops:,.1f} GFLOP/s (profile peak {hw.peak('fp32') / 1e9:,.1f}) and read {gbps:,.1f} GB/s "
             f"(profile bandwidth {hw.bandwidth_gbps:,.1f})")
        reason = row.get("fraction of floor_reason")
        if isinstance(reason, str) and reason:
            s += f": the profile's floor was beaten, so it was re-derived: {reason}"
        elif row["fraction of floor"] < 1 / 1.5:
            s += (f": at {prompt_len} tokens per matrix the fp32 kernels stay well below the probe's peak, which "
                  "large square products reach" if f.bound == "compute" else
                  ": the step is dominated by costs other than reading weights (per-operation overhead, attention)")
        out.append(s + ".")
    firsts = {table[table["phase"] == ph].index[0] for ph in floors}
    others = table.drop(index=list(firsts))
    out += [f"{x}." for x in reasons(others, ["phase", "run"])]  # the other runs' re-derived floors
    return "\n".join(f"- {x}" for x in out)


def prediction_check(table, res: dict | None = None) -> str:
    """The lesson's prediction (TP slower than one process on all cores, faster than one rank's share) against
    what each phase measured, and, where it failed, what the numbers say about why."""
    out = []
    for phase in ("prefill", "decode"):
        tp, solo, share = _row(table, phase, "TP="), table[table["phase"] == phase].iloc[0], _row(table, phase,
                                                                                                 ONE_SHARE)
        name = tp["run"]
        got = direction(solo[name + " vs this run"])
        held = {"slower": "held", None: "is undecided (inside the noise)", "faster": "did not hold"}[got]
        measured = than(solo[name + " vs this run"], solo["run"])
        line = f"{phase}: predicted slower than {solo['run']}; measured {measured}: the prediction {held}"
        if got == "faster":
            why = (f"{name}'s compute took {tp['compute ms']:.1f} ms per rank against one process's "
                   f"{solo['ms']:.1f} ms step, so one process did not get as much from the cores as the ranks "
                   "together did (its operations do not spread evenly over every core: small matrices, "
                   "per-operation overhead)")
            load = (res or {}).get("load", {})
            if load.get("busy"):
                why += (f", and other processes used {load['others_cpu_share']:.0%} of the CPU during the run, which "
                        "does not slow every run alike")
            line += f". Why: {why}"
        if share is not None:
            line += f". Against {share['run']}: {than(share[name + ' vs this run'], share['run'])}"
        out.append(f"- {line}.")
    return "**The prediction, checked**\n\n" + "\n".join(out)


def tp_story(table, inter: list[dict], fit: dict, breakdown: dict | None = None, res: dict | None = None) -> str:
    """Why TP is slower (or faster) than one process here, and what link would make it pay, per phase (markdown),
    after the lesson's prediction checked against the measurement (`prediction_check`). `breakdown`:
    parallel.collective_breakdown of one TP generation (waiting for the other rank against the rest)."""
    out = [prediction_check(table, res)]
    for phase in ("prefill", "decode"):
        tp = _row(table, phase, "TP=")
        solo = table[(table["phase"] == phase)].iloc[0]
        share = _row(table, phase, ONE_SHARE)
        k, name = int(tp["collectives"]), tp["run"]
        iso = 1e3 * allreduce_time(fit, MiB * tp["MiB through collectives"] / k)
        gain = solo["ms"] / tp["compute ms"]
        lines = [f"{name} takes {tp['ms']:.1f} ms, {than(solo[name + ' vs this run'], solo['run'], solo['ms'])}."]
        if gain < 1.1:
            lines.append(f"Its compute alone takes {tp['compute ms']:.1f} ms per rank, "
                         + ("more than" if gain < 1 else f"only {gain:.2f}x less than")
                         + " one process's whole step: one process already uses every core and all the memory "
                         "bandwidth that the ranks share, so splitting the weights splits the work without adding "
                         "hardware.")
        else:
            lines.append(f"Its compute alone takes {tp['compute ms']:.1f} ms per rank, {gain:.2f}x less than one "
                         "process's step: here the ranks together got more from the cores than one process did, so "
                         "TP has time to spend on its collectives.")
        lines.append(f"Its {k} collectives add {tp['collectives ms']:.1f} ms ({tp['collectives ms'] / k:.2f} ms each; "
                     f"an all-reduce of that size alone takes {iso:.2f} ms here).")
        if share is not None:
            lines.append(f"Against one rank's share of the machine ({share['ms']:.1f} ms: what each rank brings, as "
                         f"each GPU would), {name} is {share[name + ' vs this run']}.")
        for r in (x for x in inter if x["phase"] == phase):
            if r["needed GB/s at zero latency"] is None:
                lines.append(f"Against {r['against']}, no link can make it pay: TP's compute alone "
                             f"({r['TP compute ms']:.1f} ms) already exceeds that run ({r['its ms']:.1f} ms).")
                continue
            measured = r["measured in the model ms"]
            lines.append(
                f"Against {r['against']}, the collectives must fit in {r['budget ms']:.1f} ms (its "
                f"{r['its ms']:.1f} ms minus TP's compute): a link of at least {r['needed GB/s at zero latency']:.3f} "
                f"GB/s at zero latency, or at most {r['allowed us per collective']:,.0f} us per collective at "
                f"infinite bandwidth. Here they took {measured:.1f} ms "
                f"({'inside' if measured < r['budget ms'] else 'outside'} it); a bare all-reduce of these sizes "
                f"would take {r['all-reduce sweep predicts ms']:.1f} ms; NVLink 3 would carry the bytes in "
                f"{1e3 * _link(r, 'NVLink 3'):.1f} us and PCIe 4.0 x16 in {1e3 * _link(r, 'PCIe 4.0'):.1f} us "
                "(datasheet bandwidth; latency comes on top).")
        title = "Prefill" if phase == "prefill" else "Decode step"
        out.append(f"**{title}**\n\n" + "\n".join(f"- {x}" for x in lines))
    if breakdown and breakdown.get("collectives"):
        b = breakdown
        out.append(f"**Inside a collective** ({b['collectives']} collectives of a warm TP generation, stamped on "
                   f"{b['ranks']} ranks with the clock they share): typically (medians) a collective waits "
                   f"{1e3 * b['median_wait_s']:.2f} ms for the other rank to arrive and takes "
                   f"{1e3 * b['median_after_arrival_s']:.2f} ms after it did, against {1e3 * fit['latency_s']:.2f} ms "
                   "for a bare small all-reduce: the difference is DTensor's bookkeeping and the hand-off to gloo's "
                   f"thread. On average each took {1e3 * b['mean_s']:.2f} ms and the worst {1e3 * b['max_s']:.1f} ms: "
                   "every collective waits for all ranks, so a rank that the operating system pauses holds up the "
                   "others.")
    return "\n\n".join(out)


def _share(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 else "under 1%"


def gpu_story(rows: list[dict]) -> str:
    """What two datasheet GPUs need from their link, per phase (from `link_need`)."""
    out = []
    for r in rows:
        nv, pcie = _link(r, "NVLink 3"), _link(r, "PCIe 4.0")
        saved = r["saved by TP ms"]
        out.append(f"{r['model']} on {r['cards']}, {r['phase']}: TP saves {saved:.2f} ms of a "
                   f"{r['floor on one card ms']:.2f} ms floor and must all-reduce {r['MiB']:.1f} MiB in "
                   f"{r['collectives']} collectives within it: the bytes take {_share(nv / saved)} of that on "
                   f"NVLink 3 and {_share(pcie / saved)} on PCIe 4.0 x16 (datasheet rates), and each collective must "
                   f"also start and finish within {r['allowed us per collective']:.0f} us on average (latency: not "
                   "on a datasheet).")
    return "\n".join(f"- {x}" for x in out)


def tp_decode_line(tp, solo, share=None) -> str:
    """A TP decode step against one process on all cores, its explanation chosen by the measured direction."""
    words = solo[tp["run"] + " vs this run"]
    why = {"slower": (f"on one box TP re-divides the cores and memory bandwidth that one process already uses, and "
                      f"adds {int(tp['collectives'])} collectives per step"),
           "faster": (f"on this box the ranks together got more from the cores than one process did, enough to pay "
                      f"for {int(tp['collectives'])} collectives per step (see the prediction checked above)"),
           None: (f"its {int(tp['collectives'])} collectives per step cost about what splitting the work saved")}
    text = f"A {tp['run']} decode step was {than(words, solo['run'], solo['ms'])}: {why[direction(words)]}"
    if share is not None:
        text += (f"; against one rank's share alone it was {share[tp['run'] + ' vs this run']}, which is the GPU "
                 "case, where each rank brings its own memory and arithmetic")
    return text + "."


def meaning(res: dict, table, bubble: list[dict], dp: dict, mem: list[dict]) -> str:
    """'What this means', each point built from this run's numbers."""
    eq = res["equality"]
    n = len(res["memory"])
    same = eq["tp_tokens_equal"] and eq["pp_tokens_equal"]
    dec = table[table["phase"] == "decode"]
    tp = dec[dec["run"].str.startswith("TP=")].iloc[0]
    solo = dec.iloc[0]
    share = dec[dec["run"] == ONE_SHARE]
    ratios = [r["measured / planner"] for r in mem]
    fr = split_fractions(res)
    first, last = bubble[0], bubble[-1]
    best = min(bubble, key=lambda r: r["step ms"])
    dp_words = than(dp["replicas against one process"], "one process on all cores")
    same_dp = ("every request got the same tokens as from one process" if dp["same tokens"] else
               "but NOT the same tokens as one process")
    pts = [
        f"TP={n} and PP={n} gave {'exactly' if same else 'NOT'} the single process's greedy tokens (largest logit "
        f"difference {eq['tp_max_logit_diff']:.1e} for TP, {eq['pp_max_logit_diff']:.1e} for PP): a split changes "
        "where the arithmetic happens and the order of some sums, not what is computed.",
        tp_decode_line(tp, solo, share.iloc[0] if not share.empty else None),
        f"The pipeline bubble followed (S-1)/(M+S-1): {first['measured bubble']:.2f} measured against "
        f"{first['formula (S-1)/(M+S-1)']:.2f} at {first['micro-batches']} micro-batch, {last['measured bubble']:.2f} "
        f"against {last['formula (S-1)/(M+S-1)']:.2f} at {last['micro-batches']}. The step took {first['step ms']:.0f} "
        f"ms at {first['micro-batches']}, {best['step ms']:.0f} ms at best ({best['micro-batches']}) and "
        f"{last['step ms']:.0f} ms at {last['micro-batches']}"
        + (": each micro-batch re-reads its stage's weights, so a smaller bubble pays only while micro-batches stay "
           "large enough to be compute-bound." if last["step ms"] > best["step ms"] else
           ": every added micro-batch shortened the step, so try more.")
        + " PP is for fitting a "
        f"model; on one box, at {first['micro-batches']} micro-batch, its step was "
        + than(first["PP against one process"], "one process", next(v for k, v in first.items() if
                                                                   k.startswith("one process"))) + ".",
        f"{n} replicas serving shares of the trace: {dp_words} ({same_dp}). Replicas need no communication, so on "
        f"{n} machines throughput would add up to {n}x; "
        + (f"on one box they reached {dp['ratio']:.2f}x because they share its memory bandwidth, which decode is "
           "bound by." if dp["ratio"] < 0.8 * n else f"on this box they came close ({dp['ratio']:.2f}x)."),
        f"Bytes per rank, measured: TP {fr[f'TP={n}']:.2f} and PP {fr[f'PP={n}']:.2f} of the model, a DP replica "
        f"{fr[f'DP={n}']:.2f}; measured / planner {min(ratios):.3f}-{max(ratios):.3f}. So the planner's per-card "
        "figures for 13B, 32B and 70B below are what a split really holds.",
    ]
    return "\n".join(f"- {p}" for p in pts)
