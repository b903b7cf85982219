"""Tables as a learner reads them at notebook width: at most ~8 columns to a view, headers in words with their
units, numbers as people write them (thousands separators, no e-notation, bytes in KiB/MiB/GiB) and a long skip
reason as a short mark in its column with the full text printed below the table.

A record keeps its keys ("ttft_idle_ms", "ppl_delta_pct") because code reads them back; a reader wants "idle TTFT
(ms)" and "perplexity change (%)". `words` turns one into the other (the index page uses it too) and `views` cuts
a wide table into narrow ones that each repeat its key columns, or lays a one-row table on its side. The measured
frames are never changed: the views are strings made for reading, built from a copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from labkit.core.units import KiB, fmt_bytes

if TYPE_CHECKING:
    import pandas as pd

WIDTH = 8  # columns a notebook shows without running off the page (key columns included)
REASON_COLUMNS = ("status", "note", "error", "speed status")  # where a skip reason goes
SHORT = 24  # a reason longer than this becomes "skipped [1]" with the full text below the table

# record keys whose words are not their parts' words
WORDS = {
    "ppl_delta_pct": "perplexity change (%)", "ppl_change": "perplexity change (fraction)",
    "ppl_vs_fp32": "perplexity vs fp32 (x)", "ppl_after_recovery": "perplexity after recovery",
    "ppl_change_after_recovery": "perplexity change after recovery (fraction)",
    "ttft_idle_ratio": "idle TTFT, times lower than the baseline (x)",
    "ttft_loaded_ratio": "TTFT under load, times lower than the baseline (x)",
    "throughput_ratio": "output throughput vs the baseline (x)",
    "throughput_rounds": "throughput ratio in each round (x)",
    "output_throughput": "output throughput (tok/s)", "request_throughput": "request throughput (req/s)",
    "x_vs_eager": "speed-up vs eager (x)", "vs_eager": "vs eager", "guide_factor": "the guide's factor (x)",
    "final_stage": "final stage", "asserted_passed": "asserted bars met", "params_M": "parameters (millions)",
    "nonzero_M": "non-zero weights (millions)", "noise_floor": "noise floor (fraction)",
    "others_cpu_share": "others' CPU share (fraction)", "max_abs_err_vs_eager": "max |error| vs eager",
    "bytes": "size", "flops": "FLOPs", "ppl": "perplexity",
}
TOKENS = {"ppl": "perplexity", "ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E", "delta": "change",
          "prev": "previous", "tok": "tokens", "busbw": "bus bandwidth", "kv": "KV",
          "x": "vs", "peak": "peak", "cpu": "CPU", "gqa": "GQA", "mha": "MHA", "fx": "FX", "rss": "RSS"}
UNITS = {"ms": "ms", "s": "s", "us": "µs", "pct": "%", "mib": "MiB", "gib": "GiB", "kib": "KiB", "gbps": "GB/s",
         "x": "x", "tflops": "TFLOP/s", "gflops": "GFLOP/s"}


def words(key: str) -> str:
    """A record key in words with its unit: "ppl_delta_pct" -> "perplexity change (%)", "ttft_idle_ms" -> "TTFT idle
    (ms)", "throughput_x_prev" -> "throughput vs previous (x)". A name that is already words ("decode floor ms",
    "MiB") is kept."""
    if key in WORDS:
        return WORDS[key]
    if "_" not in key or " " in key:
        return key
    parts = [p for p in key.split("_") if p]
    unit = UNITS.get(parts[-1].lower()) if len(parts) > 1 else None
    if unit:
        parts = parts[:-1]
    elif "x" in parts[1:-1]:  # "throughput_x_prev": a factor over the previous stage
        unit = "x"
    text = " ".join(TOKENS.get(p.lower(), p) for p in parts)
    return f"{text} ({unit})" if unit else text


def _is_bytes(column: str) -> bool:
    """A column of byte counts: "bytes", "cache_bytes", "bytes_per_token" (its values at least 1 KiB show in
    KiB/MiB/GiB; a small one, "bytes_per_weight" 0.5, as a number)."""
    return "bytes" in column.lower().replace("_", " ").split()


def _fixed(v: float) -> str:
    """A small number in fixed notation with two significant digits: 0.0012, never 1.2e-03."""
    if v == 0:
        return "0"
    decimals = 1 - math.floor(math.log10(abs(v)))
    return f"{v:.{decimals}f}" if decimals <= 9 else "0"


def cell(v, column: str = "", digits: int | None = None) -> str:
    """One value as a person reads it: "1,024", "12.3", "1.25", "0.046", "0.0012", "60.0 MiB" in a bytes column,
    "–" for missing, "yes"/"no" for a bool; text as it is. `digits`: decimals for every number at least
    10**-digits (where the lesson compares in the 4th decimal), never e-notation either way."""
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy scalars
        try:
            v = v.item()
        except (TypeError, ValueError):
            pass
    if isinstance(v, (int, float)):
        if _is_bytes(column) and abs(v) >= KiB:
            return fmt_bytes(v)
        if isinstance(v, int) or (v.is_integer() and abs(v) < 1e15):
            return f"{int(v):,}"
        a = abs(v)
        if digits is not None and a >= 10 ** -digits:
            return f"{v:,.{digits}f}"
        if a >= 100:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if a >= 1 else f"{v:.3f}" if a >= 0.01 else _fixed(v)
    return str(v)


@dataclass
class Views:
    """A table cut for reading: `parts` (DataFrames of text, at most `width` columns each, key columns as their
    index) and `notes` (the full text of every shortened reason, "[1] skipped: ...")."""
    parts: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def columns(self) -> list[int]:
        """Columns of each part, its index (the key columns) included: what a reader's eye has to cross."""
        return [len(p.columns) + p.index.nlevels for p in self.parts]


def _shorten(values: list[str], marks: dict[str, int]) -> list[str]:
    out = []
    for text in values:
        if len(text) <= SHORT:
            out.append(text)
            continue
        n = marks.setdefault(text, len(marks) + 1)
        head = text.split(":", 1)[0] if ":" in text[:SHORT] else " ".join(text.split()[:2])
        out.append(f"{head[:SHORT]} [{n}]")
    return out


def views(df: pd.DataFrame, keys: list[str] | str | None = None, width: int = WIDTH,
          reasons: tuple[str, ...] = REASON_COLUMNS, digits: int | None = None) -> Views:
    """`df` (measured rows, record keys as columns) as narrow views of text: headers through `words`, values
    through `cell`, a long reason in a `reasons` column as "skipped [1]" with "[1] <the full reason>" in
    `notes`. `keys` (default: the first column) become every part's index, so each part still says which row is
    which; the other columns are cut into parts of at most `width` columns in all. A one-row table wider than
    `width` / 2 columns is laid on its side (one line per column). `digits`: as in `cell`."""
    import pandas as pd

    if width < 2:
        raise ValueError(f"width must be at least 2 (a key column and one more), got {width}")
    df = pd.DataFrame(df).copy()
    if isinstance(df.index, pd.MultiIndex) or df.index.name is not None:
        df = df.reset_index()
    if df.empty:  # nothing ran: the headers in words, no rows
        return Views([pd.DataFrame(columns=[words(str(c)) for c in df.columns])])
    keys = [keys] if isinstance(keys, str) else list(keys or df.columns[:1])
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise KeyError(f"key column(s) {missing} not in the table; its columns are {list(df.columns)}")
    marks: dict[str, int] = {}
    text = pd.DataFrame(index=df.index)
    for c in df.columns:
        values = [cell(v, str(c), digits) for v in df[c]]
        head = words(str(c)) if words(str(c)) not in text.columns else str(c)  # two keys, the same words
        text[head] = _shorten(values, marks) if str(c) in reasons else values
    notes = [f"[{n}] {reason}" for reason, n in marks.items()]
    key_words = [text.columns[list(df.columns).index(k)] for k in keys]
    if len(df) == 1 and len(df.columns) > width // 2:
        side = text.T
        side.columns = ["value"]
        side.index.name = "measure"
        return Views([side], notes)
    text = text.set_index(key_words)
    per = max(1, width - len(keys))
    cols = list(text.columns)
    parts = [text[cols[i:i + per]] for i in range(0, len(cols), per)] or [text]
    return Views(parts, notes)
