"""Notebook 06's experiment: attention kernels, torch.compile, precision and the KV cache, measured.

The techniques live in `techniques.kernels` (attention in one call) and `techniques.memory` (peak memory, KV-cache
bytes, the int8 cache); this package holds the loops that measure them and the tables and figures the notebook
shows, one module per study: `attention` (the op and a whole prefill against length, with roofline floors),
`compiling` (torch.compile of a static-cache decoder), `precision` (casts and autocast), `kvcache` (formula
against allocation, an int8 cache), `plots` (the figures), `summary` (sentences, verdict inputs, conclusions) and
`settings` (the notebook's parameters resolved). This file re-exports what the notebook (`kx`), the tests and
labkit.course.claims use.
"""

from labkit.core.units import GiB, MiB, dtype_name, than
from labkit.lessons.kernels.attention import (
    LENGTHS_TRIED,
    Layout,
    attention_floor,
    attention_sweep,
    eager_score_traffic,
    growth,
    length_for_speedup,
    plan_lengths,
    plan_table,
    prefill_sweep,
    roofline_speedup,
    roofline_table,
)
from labkit.lessons.kernels.compiling import (
    COMPILE_VARIANTS,
    MATMUL_OPS,
    compile_explanation,
    compile_profiles,
    compile_study,
    profile_table,
    step_profile,
)
from labkit.lessons.kernels.kvcache import kv_context_table, kv_measured, kv_model, kv_quant_study
from labkit.lessons.kernels.plots import plot_kv, plot_memory, plot_time
from labkit.lessons.kernels.precision import (
    PRECISIONS,
    empty_cache_rows,
    precision_context,
    precision_model,
    precision_quality,
    precision_speed,
)
from labkit.lessons.kernels.settings import KV_SHAPES, Settings, resolve_parameters
from labkit.lessons.kernels.summary import (
    autocast_line,
    memory_line,
    speed_trend,
    sweep_findings,
    try_this,
    verdict_inputs,
    what_this_means,
)

__all__ = [
    "COMPILE_VARIANTS", "GiB", "KV_SHAPES", "LENGTHS_TRIED", "Layout", "MATMUL_OPS", "MiB", "PRECISIONS", "Settings",
    "attention_floor", "attention_sweep", "autocast_line", "memory_line", "speed_trend", "try_this",
    "compile_explanation", "compile_profiles", "compile_study", "dtype_name",
    "eager_score_traffic", "empty_cache_rows", "growth", "kv_context_table", "kv_measured", "kv_model",
    "kv_quant_study", "length_for_speedup", "plan_lengths", "plan_table", "plot_kv", "plot_memory", "plot_time",
    "precision_context", "precision_model", "precision_quality", "precision_speed", "prefill_sweep", "profile_table",
    "resolve_parameters", "roofline_speedup", "roofline_table", "step_profile", "sweep_findings", "than",
    "verdict_inputs", "what_this_means",
]
