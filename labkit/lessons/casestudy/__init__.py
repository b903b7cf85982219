"""Notebook 07's case study: the guide's 13B deployment (claim C12) rebuilt step by step on this machine.

The guide stacks INT8, continuous batching and FlashAttention on a 13B model and reports TTFT 287 -> 72 ms and
12.4 -> 51.3 output tokens/s ("312%"). Here each stage is a configuration of pieces earlier lessons built, and
every stage replays the same seeded trace in the same run:

    baseline               fp32, eager attention, transformers `generate`, one request at a time
    + INT8                 the fastest INT8 path measured on this machine (`pick_int8`), still one at a time
    + continuous batching  labkit.serve's engine, its attention spelled out (eager) as in the stage before
    + fast attention       the engine with SDPA's fused kernels (flash on CUDA)
    + bf16                 the parts INT8 leaves alone in bf16, where the INT8 path accepts it; kept only if
                           it is measurably faster
    best here              (by default only on a CPU without int8/bf16 matrix units, full preset) weight-only
                           INT8/INT4 and plain fp32 through the engine with SDPA, in the same rounds: the fastest
                           is what to run on this machine, set beside the stack with its ceiling and perplexity

Speed is measured on a shape-faithful Llama-2-13B with few layers and projected to its 40 layers (another model:
its own depth) from the measured model's per-layer cost; quality (held-out perplexity) on the embedded model with
the same transformations. The check compares ratios of times measured in one run, never absolute times.

One job per module: `stages` (the stages and how each is built and served), `int8` (picking the INT8 path),
`measure` (the rounds and the in-run matmul rates), `quality` (perplexity and answers as each stage serves),
`project` (to the full depth, with the roofline's floors), `check` (the 4x verdict), `tables` and `figures`
(the notebook's views), `prose` (What this means and Try this, from the rows), `best` (what pays most on this
machine, beside the stack), `parameters` (the notebook's parameters, resolved). Everything the notebook, the tests
and the course use is importable from here.
"""

from labkit.lessons.casestudy.best import (
    BEST_CANDIDATES,
    best_candidates,
    best_here_wanted,
    candidate_name,
    compare_best,
    split_best,
)
from labkit.lessons.casestudy.best import (
    cost_line as best_here_cost,
)
from labkit.lessons.casestudy.check import ASSERT_MARGIN, PPL_TOLERANCE_PCT, TARGET, ceilings, check
from labkit.lessons.casestudy.figures import plot_stages
from labkit.lessons.casestudy.int8 import (
    ELIMINATE_ABOVE,
    INT8_CANDIDATES,
    INVARIANT_SLACK,
    NOT_A_CANDIDATE,
    int8_candidates,
    pick_int8,
)
from labkit.lessons.casestudy.measure import (
    AFTER_REPLAYS_S,
    in_run_card,
    kernel_ratio,
    matmul_tflops,
    measure,
    replay_deadline,
    rounds_done,
    rounds_line,
)
from labkit.lessons.casestudy.parameters import Settings, settings
from labkit.lessons.casestudy.project import machine_card, project
from labkit.lessons.casestudy.prose import best_here_line, factor_words, try_this, what_this_means
from labkit.lessons.casestudy.quality import (
    PPL_DECODE,
    PPL_STRIDE,
    PPL_WINDOW,
    answer_agreement,
    answers_lines,
    perplexities,
)
from labkit.lessons.casestudy.stages import (
    EXTRAS,
    GUIDE,
    KEEP_ABOVE,
    Server,
    Stage,
    compute_dtype,
    final_stage,
    plan,
    quality_model,
    stage_model,
)
from labkit.lessons.casestudy.tables import (
    best_here_view,
    case_table,
    full_depth_view,
    guide_line,
    stack_view,
    stages_view,
)

__all__ = [
    "AFTER_REPLAYS_S", "ASSERT_MARGIN", "BEST_CANDIDATES", "ELIMINATE_ABOVE", "EXTRAS", "GUIDE", "INT8_CANDIDATES",
    "INVARIANT_SLACK", "KEEP_ABOVE", "NOT_A_CANDIDATE", "PPL_DECODE", "PPL_STRIDE", "PPL_TOLERANCE_PCT", "PPL_WINDOW",
    "TARGET", "Server", "Settings", "Stage", "answer_agreement", "answers_lines", "best_candidates", "best_here_line",
    "best_here_cost", "best_here_view", "best_here_wanted", "candidate_name", "case_table", "ceilings", "check",
    "compare_best", "compute_dtype", "factor_words", "final_stage", "full_depth_view", "guide_line", "in_run_card",
    "int8_candidates", "kernel_ratio", "machine_card", "matmul_tflops", "measure", "perplexities", "pick_int8",
    "plan", "plot_stages", "project", "quality_model", "replay_deadline", "rounds_done", "rounds_line", "settings",
    "split_best", "stack_view", "stage_model", "stages_view", "try_this", "what_this_means",
]
