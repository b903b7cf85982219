"""Notebook 04's figures: TP's compute and collectives against one process, the all-reduce time against message
size with its latency + bandwidth fit, C14's compute saved against collectives added, and the pipeline bubble.
Each takes the rows of a table (tables.py) and returns a matplotlib figure; matplotlib is imported when drawing.
"""

from __future__ import annotations

import numpy as np

from labkit.lessons.parallelism.tables import allreduce_time


def plot_tp(table):
    """Stacked bars: compute and collectives of each run, prefill and one decode step side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (phase, g) in zip(axes, table.groupby("phase", sort=False), strict=True):
        comm = g["collectives ms"].fillna(0.0)
        ax.barh(g["run"], g["compute ms"], label="compute")
        ax.barh(g["run"], comm, left=g["compute ms"], label="collectives")
        ax.axvline(g["floor ms"].iloc[0], ls="--", color="gray", lw=1, label="roofline floor (whole machine)")
        ax.set(xlabel="ms", title=f"{phase}" + (" (one step)" if phase == "decode" else ""))
        ax.set_xlim(0, 1.08 * max((g["compute ms"] + comm).max(), g["floor ms"].iloc[0]))
        ax.invert_yaxis()
    axes[1].set_yticklabels([])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return fig


def plot_allreduce(rows: list[dict], fit: dict):
    """All-reduce time against message size (log-log) with the latency + bandwidth model."""
    import matplotlib.pyplot as plt

    s = np.array([r["bytes"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(s, [1e6 * r["seconds"] for r in rows], "o-", label="measured median (slowest rank)")
    grid = np.logspace(np.log10(s.min()), np.log10(s.max()), 50)
    ax.plot(grid, [1e6 * allreduce_time(fit, x) for x in grid], "--",
            label=f"model: latency {1e6 * fit['latency_s']:,.0f} us + bytes x 2(n-1)/n / {fit['busbw_gbps']:.2f} GB/s")
    ax.set(xscale="log", yscale="log", xlabel="message size (bytes)", ylabel="time per all-reduce (us)",
           title=f"All-reduce over {fit['world_size']} ranks on this machine")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_granularity(rows: list[dict]):
    """C14: compute saved by TP against the collectives it adds, by shard size, per phase."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, phase in zip(axes, ("prefill", "decode"), strict=True):
        g = sorted((r for r in rows if r["phase"] == phase), key=lambda r: r["shard MiB per rank per layer"])
        x = [r["shard MiB per rank per layer"] for r in g]
        ax.plot(x, [r["compute saved ms"] for r in g], "o-", label="compute saved (one rank - TP compute)")
        ax.plot(x, [r["collectives ms"] for r in g], "s-", label="collectives added")
        ax.axhline(0, color="gray", lw=0.8)
        for r in g:
            ax.annotate(f"h={r['hidden']}", (r["shard MiB per rank per layer"], r["collectives ms"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel="weights per rank per layer (MiB, log)", ylabel="ms",
               title=f"{phase}: TP pays where saved > added")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_bubble(rows: list[dict], stages: int = 2):
    """Measured bubble against GPipe's formula, by micro-batches, with the step time on a second axis."""
    import matplotlib.pyplot as plt

    m = [r["micro-batches"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(m, [r["measured bubble"] for r in rows], "o-", label="measured bubble")
    ax.plot(m, [r["formula (S-1)/(M+S-1)"] for r in rows], "--", label="(S-1)/(M+S-1)")
    from matplotlib.ticker import NullFormatter

    ax.set(xscale="log", xlabel="micro-batches M", ylabel="idle fraction of the step", ylim=(0, 1),
           title=f"Pipeline bubble, {stages} stages (GPipe)")
    ax.set_xticks(m, [str(x) for x in m])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax2 = ax.twinx()
    ax2.plot(m, [r["step ms"] for r in rows], "^:", color="tab:red", label="step time (right axis)")
    ax2.set_ylabel("step ms", color="tab:red")
    ax2.set_ylim(0, max(r["step ms"] for r in rows) * 1.15)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    return fig
