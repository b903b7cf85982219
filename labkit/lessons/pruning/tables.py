"""Notebook 03's conclusions from the measured tables: one row per variant with quality next to speed
(`summary`), the issue's targets and whether each was met here (`targets`), the figures claim C7 is judged on
(`c7_inputs`), the record's config (`config_dict`) and the closing markdown (`what_this_means`). Every figure in
them is taken from the tables, none typed in.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from labkit.lessons.pruning.sweep import crossover
from labkit.lessons.pruning.variants import Variant, same_cut

if TYPE_CHECKING:
    import pandas as pd


def summary(quality: pd.DataFrame, speed: pd.DataFrame, recovered: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per variant: quality on the trained model next to speed on the shape-faithful one, and the
    perplexity after the recovery fine-tune ({label: perplexity}) where one was run. `same cut`: whether both
    models lost the same share of the same units (`same_cut`); where not, the row's quality and speed are of two
    different cuts, and the figure and the sentences never pair them."""
    q = quality.reindex(columns=["label", "kind", "achieved", "params_M", "nonzero_M", "MiB", "perplexity",
                                 "ppl_change", "token_agreement"])
    q = q.rename(columns={"achieved": "achieved (quality model)", "MiB": "MiB (quality model)"})
    s = speed.copy()
    s["label"] = s["label"].str.replace(" + 2:4 kernel", "", regex=False)
    s = s.reindex(columns=["label", "status", "achieved", "decode_MiB_per_token", "prefill_x", "decode_x",
                           "predicted_decode_x", "decode_of_prediction", "full_depth_predicted_decode_x"])
    s = s.rename(columns={"status": "speed status", "achieved": "achieved (speed model)",
                          "decode_MiB_per_token": "MiB read per token (speed model)"})
    out = q.merge(s, on="label", how="left")  # every timed variant has a quality row; keep their order
    out.insert(out.columns.get_loc("achieved (speed model)") + 1, "same cut",
               [same_cut(a, b) for a, b in zip(out["achieved (quality model)"], out["achieved (speed model)"],
                                               strict=True)])
    dense = float(quality.loc[quality["label"] == "dense", "perplexity"].iloc[0])
    rec = recovered or {}
    out["ppl_after_recovery"] = out["label"].map(rec)
    out["ppl_change_after_recovery"] = out["ppl_after_recovery"] / dense - 1
    return out


def _one(df: pd.DataFrame, label: str) -> dict | None:
    hit = df[df["label"] == label]
    return None if hit.empty else hit.iloc[0].to_dict()


def _quality_of(q: dict, s: dict) -> str:
    """The trained model's perplexity change for a timed cut, only where both models lost the same share
    (`same_cut`); else what each lost, so that no sentence pairs one cut's quality with another's speed."""
    if same_cut(q.get("achieved"), s.get("achieved")):
        return f"perplexity {q['ppl_change']:+.1%} on the trained model (the same cut)"
    return (f"its perplexity is not paired with this speed: the trained model's cut removed {q.get('achieved')}, the "
            f"speed model's {s.get('achieved')} (whole units of smaller models)")


def targets(quality: pd.DataFrame, speed: pd.DataFrame, recovered: dict[str, float], *,
            structured_label: str, sparsity: float = 0.5) -> list[dict]:
    """The issue's targets, each with the measured figures and whether it was met here."""
    out = []
    timed = speed[(speed["kind"] == "unstructured") & (speed["status"] == "ok")]
    if not timed.empty:
        worst = max(timed["decode_x"].sub(1).abs().max(), timed["prefill_x"].sub(1).abs().max())
        out.append({"target": "unstructured pruning on dense kernels: speed within 10% of dense",
                    "measured": "; ".join(f"{r['label']}: decode {r['decode_x']:.2f}x, prefill {r['prefill_x']:.2f}x"
                                          for _, r in timed.iterrows()),
                    "met": bool(worst <= 0.10)})
    s, q = _one(speed, structured_label), _one(quality, structured_label)
    if s and q and s["status"] == "ok":
        out.append({"target": f"{structured_label}: decode speed-up at least 80% of what the bytes saved predict",
                    "measured": f"decode {s['decode_x']:.2f}x measured, {s['predicted_decode_x']:.2f}x predicted by "
                                f"the floor ({s['decode_of_prediction']:.0%} of it); " + _quality_of(q, s),
                    "met": bool(s["decode_of_prediction"] >= 0.8)})
    dense = _one(quality, "dense")
    for label, after in recovered.items():
        q = _one(quality, label)
        lost = q["perplexity"] - dense["perplexity"]
        won = (q["perplexity"] - after) / lost if lost > 0 else float("nan")
        out.append({"target": f"recovery of {label}: win back at least half the perplexity the cut lost",
                    "measured": f"perplexity {dense['perplexity']:.2f} dense -> {q['perplexity']:.2f} pruned -> "
                                f"{after:.2f} after fine-tuning: {won:.0%} of the loss won back",
                    "met": bool(won >= 0.5)})
    mag, wan = _one(quality, f"magnitude {sparsity:.0%}"), _one(quality, f"wanda {sparsity:.0%}")
    if mag and wan and mag["status"] == "ok" and wan["status"] == "ok":
        out.append({"target": f"Wanda beats magnitude at {sparsity:.0%} unstructured on perplexity",
                    "measured": f"magnitude {mag['perplexity']:.3f} ({mag['ppl_change']:+.2%}), Wanda "
                                f"{wan['perplexity']:.3f} ({wan['ppl_change']:+.2%})",
                    "met": bool(wan["perplexity"] < mag["perplexity"])})
    return out


def c7_inputs(quality: pd.DataFrame, speed: pd.DataFrame, ratios: dict, *, unstructured_label: str,
              structured_label: str, recovered: dict[str, float] | None = None) -> tuple[dict | None, dict | None]:
    """The measured figures claims.c7 judges: for the magnitude cut and for the structured cut, the decode
    speed-up (value and words), the perplexity change, the greedy-token agreement, and (structured) the
    perplexity change after recovery."""
    dense = _one(quality, "dense")
    out = []
    for label in (unstructured_label, structured_label):
        q, s = _one(quality, label), _one(speed, label)
        if not q or not s or q.get("status") != "ok" or s.get("status") != "ok" or not same_cut(
                q.get("achieved"), s.get("achieved")):  # never one cut's quality with another's speed
            out.append(None)
            continue
        d = {"label": label, "decode_x": s["decode_x"], "decode_words": ratios[label]["decode"].words(),
             "ppl_change": q["ppl_change"], "agreement": q.get("token_agreement")}
        if recovered and label in recovered:
            d["ppl_change_recovered"] = recovered[label] / dense["perplexity"] - 1
        out.append(d)
    return out[0], out[1]

def config_dict(**kw) -> dict:
    """Plain values for a record (Variants as their steps)."""
    return {k: ([dataclasses.asdict(x) for x in v] if isinstance(v, list) and v and isinstance(v[0], Variant)
                else v) for k, v in kw.items()}


def _faster(r) -> bool | None:
    """A Ratio's direction in words' terms: True faster, False slower, None inside the noise."""
    return None if not r.conclusive else r.value > 1


def unstructured_line(label: str, ratios: dict, ppl_change: float) -> str:
    """The unstructured cut on dense kernels, its headline chosen by the measured ratios (the floor predicts no
    change: every zero is still stored, read and multiplied)."""
    d, p = ratios[label]["decode"], ratios[label]["prefill"]
    moved = [w for w, r in (("decode", d), ("prefill", p)) if _faster(r) is not None]
    head = ("**Zeros on dense kernels cost the same time.**" if not moved else
            f"**Zeros on dense kernels: {' and '.join(moved)} measurably different here.**")
    why = ("Every zero is still stored, read and multiplied" if not moved else
           "The floor predicts no change (every zero is still stored, read and multiplied), so this difference comes "
           "from the machine between rounds (its load, its clocks), not from the zeros: rerun to see whether it holds")
    return (f"* {head} {label} (unstructured) against the dense model: decode {d.words()}, prefill {p.words()}. "
            f"{why}; the cut costs quality: perplexity {ppl_change:+.1%}.")


def sweep_line(sweep: pd.DataFrame) -> str:
    """Where torch's CSR kernel beat the dense one in the sweep, and how far each ran from its floor, the headline
    chosen by the measured crossovers."""
    parts, cross = [], []
    for t in sorted(sweep["tokens"].unique()):
        c = crossover(sweep, int(t))
        cross.append(c)
        low = sweep[sweep["tokens"] == t].sort_values("sparsity").iloc[0]
        phase = "decode (1 token)" if t == 1 else f"prefill ({t} tokens)"
        parts.append((f"{phase}: from {c:.0%}" if c is not None else
                      f"{phase}: not even at {sweep['sparsity'].max():.0%}")
                     + f" (at {low['sparsity']:.0%}, bytes and FLOPs alone predicted {low['predicted_csr_x']:.2f}x; "
                       f"it ran {low['csr_words']})")
    found = [c for c in cross if c is not None]
    head = ("**The sparse kernel never beat the dense one here.**" if not found else
            f"**A sparse kernel pays only from {min(found):.0%} sparsity here.**")
    lo, hi = sweep["csr_of_floor"].min(), sweep["csr_of_floor"].max()
    dlo, dhi = sweep["dense_of_floor"].min(), sweep["dense_of_floor"].max()
    rel = "below" if hi < dlo else "above" if lo > dhi else "overlapping"
    text = (f"* {head} Torch's CSR kernel against the dense one, by phase: {'; '.join(parts)}. Each nonzero carries a "
            f"4-byte column index and its input is gathered from scattered addresses: the CSR kernel reached {lo:.0%}-"
            f"{hi:.0%} of its roofline floor, {rel} the dense one's {dlo:.0%}-{dhi:.0%}.")
    reasons = [r for k in ("dense_of_floor_reason", "csr_of_floor_reason") if k in sweep
               for r in sweep[k].dropna().unique()]
    if reasons:
        text += f" Floors beaten in this run were re-derived ({len(reasons)}); the first: {reasons[0]}."
    return text


def structured_line(label: str, s: dict, ratios: dict) -> str:
    """The structured cut: its headline chosen by the measured decode ratio, its perplexity only where the trained
    model lost the same share as the speed model (`same cut`)."""
    d, p = ratios[label]["decode"], ratios[label]["prefill"]
    head = {True: "**Smaller matrices are faster.**", False: "**Smaller matrices were slower here.**",
            None: "**Smaller matrices were not measurably faster here.**"}[_faster(d)]
    rec = s.get("ppl_change_after_recovery")
    rec_words = f", {rec:+.1%} after the recovery fine-tune" if rec == rec and rec is not None else ""
    cost = (f"The cost of the same cut on the trained model: perplexity {s['ppl_change']:+.1%}{rec_words}."
            if s.get("same cut") else
            f"Its quality is of another cut: the trained model lost {s.get('achieved (quality model)')} (perplexity "
            f"{s['ppl_change']:+.1%}{rec_words}), the speed model {s.get('achieved (speed model)')}, so the two are "
            "not one trade-off (whole units of models of different sizes).")
    return (f"* {head} {label} reads {s['MiB read per token (speed model)']:.0f} MiB per decoded token on the speed "
            f"model; the roofline floor predicts {s['predicted_decode_x']:.2f}x for decode; measured: decode "
            f"{d.words()} ({s['decode_of_prediction']:.0%} of the prediction), prefill {p.words()}. With all layers of "
            f"the full model (the head a smaller share) the floor predicts {s['full_depth_predicted_decode_x']:.2f}x. "
            + cost)


def what_this_means(table: pd.DataFrame, ratios: dict, sweep: pd.DataFrame | None, spread: pd.DataFrame | None,
                    *, unstructured_label: str, structured_label: str, sparsity: float = 0.5) -> str:
    """The lesson's conclusions as markdown, every figure and every headline taken from the measured tables."""
    lines = []
    u, s = _one(table, unstructured_label), _one(table, structured_label)
    if u and u.get("speed status") == "ok":
        lines.append(unstructured_line(unstructured_label, ratios, u["ppl_change"]))
    if sweep is not None and not sweep.empty:
        lines.append(sweep_line(sweep))
    if s and s.get("speed status") == "ok":
        lines.append(structured_line(structured_label, s, ratios))
    mag, wan = _one(table, f"magnitude {sparsity:.0%}"), _one(table, f"wanda {sparsity:.0%}")
    if mag and wan and spread is not None:
        better = "beats" if wan["perplexity"] < mag["perplexity"] else "does not beat"
        lines.append(f"* **Wanda {better} magnitude here** at {sparsity:.0%} ({wan['ppl_change']:+.2%} against "
                     f"{mag['ppl_change']:+.2%}). Its activation term matters where a few input channels are far "
                     f"larger than the rest; in this small model the largest channel's activation norm is at most "
                     f"{float(spread.max().max()):.1f}x the median one (the synthetic outlier layer above shows "
                     "the difference it makes when they are large).")
    nm = table[table["kind"] == "semi-structured"]
    if not nm.empty:
        st = nm["speed status"].dropna()
        speed = st.iloc[0] if not st.empty else "not timed"
        costs = ", ".join(f"{r.ppl_change:+.1%} ({r.label})" for r in nm.itertuples())
        lines.append(f"* **2:4** costs perplexity {costs}; its speed: {speed}.")
    return "\n".join(lines)
