"""Notebook 07's tables, as views of the measured rows: the stages side by side (`stages_view`), the stack with
its perplexity and roofline fractions (`case_table`, `stack_view`), and the projection to the full 13B
(`full_depth_view`), the best-here candidates beside the stack (`best_here_view`); plus the guide's own figures
in one line (`guide_line`). Column names stay the records' keys; only the views rename them for reading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.lessons.casestudy.stages import GUIDE

if TYPE_CHECKING:
    import pandas as pd

STAGE_COLUMNS = ["stage", "status", "ttft_idle_ms", "ttft_idle_x_prev", "ttft_p50_ms", "tpot_p50_ms",
                 "output_throughput", "throughput_x_prev", "guide_factor", "ttft_cold_ms"]
STACK_COLUMNS = {"stage": "stage", "ttft_idle_ms": "idle TTFT ms", "output_throughput": "tok/s",
                 "throughput_x_prev": "x prev", "guide_factor": "guide x", "ppl_delta_pct": "perplexity %",
                 "throughput_ceiling": "ceiling tok/s", "fraction_of_ceiling": "of ceiling",
                 "ttft_fraction_of_floor": "TTFT of floor"}
FULL_DEPTH_COLUMNS = {"stage": "stage", "prefill_share": "prefill share", "ttft_idle_ms_full": "{n}-layer idle TTFT ms",
                      "ttft_floor_ms_full": "its floor ms", "output_throughput_full": "{n}-layer tok/s",
                      "throughput_ceiling_full": "its ceiling tok/s", "fraction_of_ceiling_full": "of ceiling",
                      "weights_gib_full": "weights GiB"}  # {n}: the full model's layers


def _view(table: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """`table`'s `columns` in that order (a missing one as NaN), renamed for reading, rounded to 2 decimals."""
    return table.reindex(columns=list(columns)).rename(columns=columns).round(2)


def stages_view(table: pd.DataFrame) -> pd.DataFrame:
    """The measured stages (and the skipped ones) side by side: idle and loaded TTFT, TPOT, throughput, the
    factor over the stage before and the guide's factor for that stage."""
    return _view(table, {c: c for c in STAGE_COLUMNS})


def case_table(rows: list[dict], ppl_rows: list[dict], proj: list[dict]) -> pd.DataFrame:
    """One row per measured stage: its measurements (`measure`), its perplexity (`perplexities`) and its
    projection and roofline fractions (`project`), joined on the stage's name."""
    import pandas as pd

    return pd.DataFrame(rows).merge(pd.DataFrame(ppl_rows), on="stage").merge(pd.DataFrame(proj), on="stage")


def stack_view(case: pd.DataFrame) -> pd.DataFrame:
    """The stack at the measured depth: idle TTFT, throughput, factor over the stage before against the guide's,
    perplexity change, and the fraction of the roofline's throughput ceiling and idle-TTFT floor reached."""
    return _view(case, STACK_COLUMNS)


def _depth(columns: dict[str, str], layers: int) -> dict[str, str]:
    return {k: v.format(n=layers) for k, v in columns.items()}


def full_depth_view(case: pd.DataFrame, layers: int) -> pd.DataFrame:
    """The stack projected to the full model's `layers` layers, with its floors and ceilings."""
    return _view(case, _depth(FULL_DEPTH_COLUMNS, layers))


BEST_HERE_COLUMNS = {"stage": "stage", "config": "configuration", "output_throughput": "tok/s",
                     "throughput_x_stack": "x guide's stack", "ttft_idle_ms": "idle TTFT ms",
                     "tpot_p50_ms": "TPOT p50 ms", "throughput_ceiling": "ceiling tok/s",
                     "fraction_of_ceiling": "of ceiling", "output_throughput_full": "{n}-layer tok/s",
                     "throughput_ceiling_full": "its ceiling tok/s", "ppl_delta_pct": "perplexity %",
                     "picked": "run this", "status": "status"}


def best_here_view(best: dict, layers: int) -> pd.DataFrame:
    """The guide's stack (its final stage, first) beside the best-here candidates (labkit.lessons.casestudy.best
    .compare_best): throughput and its factor over the stack, TTFT, TPOT, the ceiling for the trace and the fraction
    reached, the projection to the full model's `layers` layers, the perplexity change, which one to run here; a
    candidate left out is listed with why."""
    import pandas as pd

    return _view(pd.DataFrame(best["rows"]), _depth(BEST_HERE_COLUMNS, layers))


def guide_line() -> str:
    """The guide's reported figures for its 13B deployment, for printing next to the measured table."""
    return (f"guide: TTFT {GUIDE['ttft_ms'][0]:.0f} -> {GUIDE['ttft_ms'][1]:.0f} ms, throughput "
            f"{GUIDE['throughput'][0]} -> {GUIDE['throughput'][1]} tok/s (A100-class GPU)")
