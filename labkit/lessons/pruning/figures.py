"""Notebook 03's figures, drawn from the measured tables: quality against sparsity, quality against measured
speed, the dense-vs-CSR sweep and the recovery fine-tune's loss. Each returns the matplotlib figure; the notebook
shows and saves it (`lesson.show`) under the same name as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.core.units import plain_log_ticks
from labkit.lessons.pruning.sweep import crossover

if TYPE_CHECKING:
    import pandas as pd


def plot_loss(losses: dict[str, list[float]], perplexities: dict[str, tuple[float, float]] | None = None):
    """Training loss per step of each recovery fine-tune ({label: losses}), smoothed when there are many
    steps; `perplexities` ({label: (before, after)}) go into the legend."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, (label, ls) in enumerate(losses.items()):
        name = label
        if perplexities and label in perplexities:
            before, after = perplexities[label]
            name += f" (held-out perplexity {before:.2f} -> {after:.2f})"
        steps = np.arange(1, len(ls) + 1)
        if len(ls) >= 40:  # smooth long runs: single steps are noisy at this batch size
            k = len(ls) // 20
            ax.plot(steps, ls, lw=0.6, alpha=0.3, color=f"C{i}")
            ax.plot(steps[k - 1:], np.convolve(ls, np.ones(k) / k, mode="valid"), lw=2, color=f"C{i}",
                    label=f"{name}, mean of {k} steps")
        else:
            ax.plot(steps, ls, "o-", ms=3, color=f"C{i}", label=name)
    ax.set(xlabel="fine-tuning step", ylabel="training loss (nats per token)",
           title="Recovery fine-tune of the structurally pruned models")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig

def plot_sweep(sweep: pd.DataFrame):
    import matplotlib.pyplot as plt

    phases = list(dict.fromkeys(sweep["phase"]))
    fig, axes = plt.subplots(1, len(phases), figsize=(10, 3.8), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        d = sweep[sweep["phase"] == phase]
        ax.plot(100 * d["sparsity"], d["dense_ms"], "o-", label="dense kernel (zeros included)")
        ax.plot(100 * d["sparsity"], d["csr_ms"], "s-", label="CSR sparse kernel")
        cross = crossover(sweep, int(d["tokens"].iloc[0]))
        if cross is not None:
            ax.axvline(100 * cross, color="grey", ls="--", lw=1, label=f"CSR wins from {cross:.0%}")
        ax.set(yscale="log", xlabel="sparsity (% of weights zero)", ylabel="time per matmul (ms)", title=phase)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Where a sparse kernel starts to pay on this machine (one fp32 weight matrix)")
    fig.tight_layout()
    return fig

def plot_quality_vs_sparsity(quality: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    ok = quality[quality["status"] == "ok"]
    dense = float(ok.loc[ok["label"] == "dense", "perplexity"].iloc[0])
    for method, marker in (("magnitude", "o"), ("wanda", "s")):
        d = ok[ok["label"].str.startswith(f"{method} ")]
        x = d["label"].str.extract(r"(\d+)%")[0].astype(float)
        ax.plot(x, d["perplexity"], marker + "-", label=f"{method} (unstructured)")
    for _, r in ok[~ok["label"].str.startswith(("magnitude ", "wanda ", "dense"))].iterrows():
        x = 50.0 if r["kind"] == "semi-structured" else 100 * (1 - r["params_M"] / ok["params_M"].iloc[0])
        ax.scatter([x], [r["perplexity"]], marker="^" if r["kind"] == "structured" else "D", zorder=3)
        ax.annotate(r["label"], (x, r["perplexity"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.axhline(dense, color="grey", lw=0.8, ls="--", label=f"dense {dense:.2f}")
    ax.set(yscale="log", xlabel="sparsity (% of decoder weights; structured: % of all parameters removed)",
           ylabel="held-out perplexity (log)", title="What each cut costs in quality (trained 16M model)")
    plain_log_ticks(ax, "y", minor="123456789", minor_size=7)  # 20, 50, 100: not 2x10^1
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def plot_quality_vs_speed(table: pd.DataFrame):
    """Each timed cut: perplexity over dense (log) against the measured decode speed-up (filled), the speed-up
    the roofline floor predicted for its shape (open, dotted line), and the perplexity after recovery (star).
    Only cuts that removed the same share on both models (`same cut`) are drawn; the others are named below the
    axes: their quality and speed are of two different cuts."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    timed = table[(table["speed status"] == "ok") & table["perplexity"].notna()]
    same = timed["same cut"].fillna(False).astype(bool) if "same cut" in timed else timed["label"].notna()
    ok, apart = timed[same], timed[~same]
    if not apart.empty:
        fig.subplots_adjust(bottom=0.24)
        ax.text(0, -0.2, "not drawn (another cut on the speed model than on the trained one): "
                + "; ".join(f"{r['label']} ({r['achieved (speed model)']} vs {r['achieved (quality model)']})"
                            for _, r in apart.iterrows()), transform=ax.transAxes, fontsize=7, va="top", wrap=True)
    dense = float(table.loc[table["label"] == "dense", "perplexity"].iloc[0])
    colors = {"dense": "black", "unstructured": "C0", "semi-structured": "C2", "structured": "C3"}
    for _, r in ok.iterrows():
        c, y = colors.get(r["kind"], "C4"), r["perplexity"] / dense
        ax.scatter(r["decode_x"], y, color=c, zorder=3)
        if r["kind"] != "dense":
            ax.plot([r["decode_x"], r["predicted_decode_x"]], [y, y], ":", color=c, lw=1)
            ax.scatter(r["predicted_decode_x"], y, facecolors="none", edgecolors=c, zorder=3)
        ax.annotate(r["label"], (r["decode_x"], y), fontsize=8, textcoords="offset points",
                    xytext=(4, -11) if r["kind"] == "dense" else (4, 4))
        after = r.get("ppl_after_recovery")
        if after == after and after is not None:  # not NaN: this cut was fine-tuned
            ax.annotate("", (r["decode_x"], after / dense), (r["decode_x"], y),
                        arrowprops={"arrowstyle": "->", "color": c, "lw": 1})
            ax.scatter(r["decode_x"], after / dense, color=c, marker="*", s=110, zorder=3)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(yscale="log", xlabel="batch-1 decode speed-up vs dense (x)",
           ylabel="held-out perplexity / dense (log)",
           title="Quality against measured speed: only smaller matrices are faster")
    handles = [Line2D([], [], ls="", marker="o", color="grey", label="measured"),
               Line2D([], [], ls="", marker="o", mfc="none", color="grey", label="predicted by the roofline floor"),
               Line2D([], [], ls="", marker="*", ms=10, color="grey", label="after the recovery fine-tune")]
    handles += [Line2D([], [], ls="", marker="o", color=c, label=k) for k, c in colors.items()
                if k in set(ok["kind"])]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    plain_log_ticks(ax, "y", minor="123456789", minor_size=7)  # 20, 50, 100: not 2x10^1
    ax.grid(alpha=0.3, which="both")
    return fig
