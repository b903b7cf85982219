"""The peers' verdicts: the sentences `labkit peers` prints and records, each built from the rounds it timed.

- `floor_fields`: each row's decode floor (its own bytes at notebook 01's bandwidth) and the fraction reached;
- `target_lines`: labkit's fastest path of a kind against the peer issue #18 names for it;
- `best_lines`: labkit's fastest path against the fastest peer of any engine, per phase, and for the batched
  throughput (labkit.lessons.peer_batch) where it was measured;
- the memory line (labkit.lessons.peer_memory.least_line).

Every ratio is the median of per-round ratios from rounds timed side by side (labkit.core.bench.Rounds.ratio):
inside the noise floor a sentence says inconclusive.
"""

from __future__ import annotations

from labkit.core.units import than
from labkit.lessons import peer_memory
from labkit.lessons.peer_runtimes import LABKIT_PATHS, Contender

UPPER_BOUND_BYTES = ("ctranslate2",)  # engines whose bytes per token are an upper bound (peers._ct2_bytes)


def floor_fields(timed: list[tuple[Contender, float]], hw, source: str = "notebook 01's profile") -> dict[str, dict]:
    """{path: its decode floor (its bytes at the card's bandwidth) and the fraction of it its median time per token
    reached}, through labkit.core.floors.of_floor: a floor beaten by more than 5% names the bandwidth as wrong and
    is re-derived from the fastest any path with exact bytes streamed (a CTranslate2 row's bytes are an upper
    bound, so its own rate is left out and its reason says so), "fraction of floor_reason" beside the fraction."""
    from labkit.core.floors import Rate, fastest_rates, of_floor

    best = fastest_rates(("memory bandwidth", p.bytes_read, t) for p, t in timed if p.engine not in UPPER_BOUND_BYTES)
    out = {}
    for p, t in timed:
        note = ("its bytes are an upper bound: the whole model file, embedding table included"
                if p.engine in UPPER_BOUND_BYTES else None)
        f = of_floor(t, [Rate("memory bandwidth", hw.bandwidth_gbps * 1e9, p.bytes_read, "B/s", source)],
                     fastest=best, note=note)
        out[p.name] = {"decode floor ms": f.floor_s * 1e3, **f.fields("fraction of floor")}
    return out


TARGETS = (  # (labkit's best among, the peer it must match, phase) as issue #18 states them
    (("labkit int4-rtn", "labkit int4-rtn+compile", "labkit bnb-nf4"), "llama.cpp q4_0", "decode"),
    (("labkit bf16", "labkit bf16+compile"), "llama.cpp bf16", "decode"),
    (("labkit int8-dynamic-legacy", "labkit int8-dynamic-onednn", "labkit int8-weight-only+compile",
      "labkit int8-dynamic+compile"),
     "llama.cpp q8_0", "decode"),
    (LABKIT_PATHS, "ctranslate2 int8", "prefill"),
)


def target_lines(rounds, table) -> list[str]:
    """One sentence per target: labkit's fastest path of a kind against the peer, as the median of per-round
    ratios (labkit.core.bench.Rounds.ratio: inside the noise it says inconclusive)."""
    timed = set(table.loc[table["status"] == "ok", "path"])
    metric = {"decode": "tpot", "prefill": "ttft"}
    lines = []
    for ours, peer, phase in TARGETS:
        mine = [f"labkit {n}" if not n.startswith("labkit ") else n for n in ours]
        mine = [n for n in mine if n in timed]
        if peer not in timed or not mine:
            lines.append(f"{phase}: {', '.join(mine) + ' vs ' if mine else ''}{peer}: not measured "
                         f"({'the peer did not run' if peer not in timed else 'no labkit path of its kind ran'})")
            continue
        best = min(mine, key=lambda n: rounds.median(n, metric[phase]))
        ratio = rounds.ratio(peer, best, metric[phase])
        verdict = ("at parity within the noise for" if not ratio.conclusive else
                   "meets" if ratio.value >= 1.0 else "misses")
        lines.append(f"{phase}: {best} is {than(ratio.words(), peer)} ({verdict} the >= 1.0x target)")
    return lines + best_lines(rounds, table) + batch_lines(table) + [x for x in [peer_memory.least_line(table)] if x]


def best_lines(rounds, table) -> list[str]:
    """Per phase, labkit's fastest path against the fastest peer of any engine, from the same rounds (median of the
    per-round ratios: inside the noise it says inconclusive): who wins here, by how much."""
    ok = table[table["status"] == "ok"]
    lines = []
    for phase, key in (("prefill", "ttft"), ("decode", "tpot")):
        mine = [n for n in ok["path"] if n.startswith("labkit ")]
        theirs = [n for n in ok["path"] if not n.startswith("labkit ")]
        if not mine or not theirs:
            lines.append(f"{phase}, best against best: not measured ({'no peer' if mine else 'no labkit path'} ran)")
            continue
        ours, peer = (min(names, key=lambda n: rounds.median(n, key)) for names in (mine, theirs))
        ratio = rounds.ratio(peer, ours, key)
        lead = ("labkit's" if ratio.value >= 1.0 else "the peer's") if ratio.conclusive else "neither"
        lines.append(f"{phase}, best against best: {ours} is {than(ratio.words(), peer)} ({lead} wins here)")
    return lines


def batch_lines(table) -> list[str]:
    """With batched columns (labkit.lessons.peer_batch, the rounds in table.attrs["batch_rounds"]): labkit's highest
    batch-B throughput against the highest peer's, from the same rounds (the same work, so the ratio of the batched
    calls' times), and which runtime gains most and least by batching."""
    r, b = table.attrs.get("batch_rounds"), table.attrs.get("batch")
    col = f"batch-{b} tok/s"
    if r is None or not b or col not in table:
        return []
    ok = table[table[col].notna()]
    mine = [n for n in ok["path"] if n.startswith("labkit ")]
    theirs = [n for n in ok["path"] if not n.startswith("labkit ")]
    tps = dict(zip(ok["path"], ok[col], strict=True))
    lines = []
    if mine and theirs:
        ours, peer = (max(names, key=tps.get) for names in (mine, theirs))
        ratio = r.ratio(f"{peer} @{b}", f"{ours} @{b}")
        lead = ("labkit's" if ratio.value >= 1.0 else "the peer's") if ratio.conclusive else "neither"
        state = dict(zip(ok["path"], ok["batched"], strict=True)) if "batched" in ok else {}
        odd = [n for n in (ours, peer) if str(state.get(n, "ok")) != "ok"]
        lines.append(f"batch-{b} throughput, best against best: {ours} ({tps[ours]:,.0f} tok/s) is "
                     f"{than(ratio.words(), peer)} ({tps[peer]:,.0f} tok/s) ({lead} wins here)"
                     + (f"; but {' and '.join(odd)} answered a request differently in the batch than alone "
                        "(batch-dependent: its answers change with their neighbours)" if odd else ""))
    else:
        lines.append(f"batch-{b} throughput, best against best: not measured "
                     f"({'no peer' if mine else 'no labkit path'} batched)")
    gains = dict(zip(ok["path"], ok["batching gain"], strict=True))
    if len(gains) > 1:
        hi, lo = max(gains, key=gains.get), min(gains, key=gains.get)
        lines.append(f"batching {b} requests gains most in {hi} ({gains[hi]:.1f}x the output tokens/s of one request "
                     f"alone) and least in {lo} ({gains[lo]:.1f}x)")
    return lines
