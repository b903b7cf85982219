"""The guide's claims as data, and one function per claim that judges it from measured records.

Every lesson that tests a claim calls the function here instead of writing its own verdict, and its prose takes
the thresholds from the constants here, so the words and the code cannot drift apart. Notebook 08 reads the
latest records of every lesson and shows the whole ledger. The package is split by job: `verdict` (the claims,
statuses and Verdict), one module per group of lessons (`measuring` 00-01, `compression` 02-03, `parallelism` 04,
`serving` 05 and 07, `kernels` 06) and `ledger` (which record each claim reads; counts, words, the figure); this
file only gathers their public names, so `claims.c10` and `claims.ledger` read as before. Every judge builds
Checks (verdict.Check: a measured figure, the bar, what it decided) and `verdict.judged` turns them into the status
and the evidence together.
"""

from labkit.course.claims.compression import (
    C7_LOSS,
    C7_SPARSITY,
    C7_SPEED_TOLERANCE,
    C7_SPEEDUP,
    INT4_NOTICEABLE,
    INT8_AGREEMENT_MIN,
    INT8_PPL_MAX,
    INT8_QUALITY_METHODS,
    INT8_SIZE_MAX,
    c5,
    c6,
    c7,
    c13,
)
from labkit.course.claims.kernels import (
    C10_EMPTY_CACHE_MIN,
    C10_MEMORY_CUT,
    C10_TOLERANCE,
    C11_MEMORY_SAVING,
    C11_SPEEDUP,
    c10,
    c11,
    kernels_verdicts,
)
from labkit.course.claims.ledger import (
    COLOURS,
    SOURCES,
    counts,
    holds_here,
    ledger,
    plot_counts,
    source_records,
    what_to_trust,
)
from labkit.course.claims.measuring import (
    C1_OPTIMIZED_S,
    C2_FLOOR_FRACTION,
    COLD_START_RANGE,
    GUIDE_PROMPT_TOKENS,
    MIN_REPEATS,
    MMAP_PRIVATE_MAX,
    c1,
    c2,
    c4,
    c15,
    c17,
)
from labkit.course.claims.parallelism import C3_MODEL, C8_MODELS, NODE, SPLIT_TOLERANCE, c3, c8, c14
from labkit.course.claims.serving import CB_THROUGHPUT_MIN, CB_VARIANCE_MAX, c9, c12, c16
from labkit.course.claims.verdict import (
    CLAIMS,
    GPU_MARK,
    INCONCLUSIVE,
    NOT_MEASURABLE,
    NOT_MEASURED,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    ROUNDS_AGREE,
    SAID,
    SNIPPETS,
    STATUSES,
    Check,
    Claim,
    Snippet,
    Verdict,
    against,
    check,
    combine,
    gpus,
    judged,
    machine_gpus,
    not_measured,
    on_hardware,
    ratio_check,
    source,
)

__all__ = [
    "C1_OPTIMIZED_S", "C2_FLOOR_FRACTION", "C3_MODEL", "C7_LOSS", "C7_SPARSITY", "C7_SPEED_TOLERANCE", "C7_SPEEDUP",
    "C8_MODELS", "C10_EMPTY_CACHE_MIN", "C10_MEMORY_CUT", "C10_TOLERANCE", "C11_MEMORY_SAVING", "C11_SPEEDUP",
    "CB_THROUGHPUT_MIN", "CB_VARIANCE_MAX", "CLAIMS", "COLD_START_RANGE", "COLOURS", "GPU_MARK", "GUIDE_PROMPT_TOKENS",
    "INCONCLUSIVE", "INT4_NOTICEABLE", "INT8_AGREEMENT_MIN", "INT8_PPL_MAX", "INT8_QUALITY_METHODS", "INT8_SIZE_MAX",
    "MIN_REPEATS", "MMAP_PRIVATE_MAX", "NODE", "NOT_MEASURABLE", "NOT_MEASURED", "NOT_REPRODUCED", "PARTLY",
    "REPRODUCED", "ROUNDS_AGREE", "SAID", "SNIPPETS", "SOURCES", "SPLIT_TOLERANCE", "STATUSES", "Check", "Claim",
    "Snippet", "Verdict", "against", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13",
    "c14", "c15", "c16", "c17", "check", "combine", "counts", "gpus", "holds_here", "judged", "kernels_verdicts",
    "ledger", "machine_gpus", "not_measured", "on_hardware", "plot_counts", "ratio_check", "source", "source_records",
    "what_to_trust",
]
