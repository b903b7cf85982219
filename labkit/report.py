"""Figures and the course's index page (reports/index.html)."""

from __future__ import annotations

from pathlib import Path

from labkit.records import reports_dir


def figures_dir() -> Path:
    d = reports_dir() / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_figure(fig, name: str) -> Path:
    """Save a matplotlib figure as reports/figures/<name>.png (the index links it) and return the path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    path = figures_dir() / f"{name}.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path
