"""Notebook 04's experiment: tensor, pipeline and data parallelism run on real ranks and measured against one process.

`run(cfg)` starts the ranks once (techniques.parallel.launch: process start-up is the costly part) and every rank works
through the parts in `lesson_worker`:
- equality: TP and PP greedy tokens and logits against the single process's;
- TP timing: prefill and decode steps of one process on all cores, one process on one rank's share (one
  "device"), and TP over all ranks, split into compute and collective time (labkit.techniques.parallel.CommTimer);
- PP: the GPipe bubble against the number of micro-batches, and the batch's time against one process;
- DP: replicas serving their shares of one request trace against one process serving it all;
- communication: all-reduce time against message size; C14's granularity sweep over hidden sizes;
- memory: bytes each rank holds under each split.
Timed candidates run side by side in rotating rounds (labkit.core.bench.run_rounds) on rank 0, which tells the other
ranks which candidate comes next; a candidate for one process runs on rank 0 alone with all the cores while the
others wait in the broadcast (blocked, not spinning). The tables, the planner comparison (13B/32B/70B on the
reference cards), the interconnect prediction and the verdict inputs are built here from the ranks' results.

The modules, one job each: `config` (the parameters and every check before a rank starts), `workers` (what the
ranks run; importable, since spawned ranks unpickle it by module path), `launcher` (starting them: `run`,
`kill_demo`), `tables`, `figures` and `prose` (the sentences). This package re-exports their public names.
"""

from labkit.core.models import shape
from labkit.lessons.parallelism.config import (
    ALL_CORES,
    LINKS_GBPS,
    ONE_GPU,
    ONE_SHARE,
    PLANNED,
    PRESETS,
    Config,
    lesson_config,
    one_device_name,
    pick_device,
    refusals,
    solo_name,
    sweep_config,
)
from labkit.lessons.parallelism.figures import plot_allreduce, plot_bubble, plot_granularity, plot_tp
from labkit.lessons.parallelism.launcher import kill_demo, run
from labkit.lessons.parallelism.prose import (
    direction,
    floor_notes,
    gpu_story,
    meaning,
    prediction_check,
    tp_decode_line,
    tp_story,
)
from labkit.lessons.parallelism.tables import (
    allreduce_fit,
    allreduce_time,
    bubble_rows,
    bus_factor,
    dp_row,
    granularity_rows,
    interconnect,
    link_need,
    memory_rows,
    reference_rows,
    rounds_of,
    split_fractions,
    tp_table,
)
from labkit.lessons.parallelism.workers import killed_worker, lesson_worker, rounds_together

__all__ = [
    "ALL_CORES", "LINKS_GBPS", "ONE_GPU", "ONE_SHARE", "PLANNED", "PRESETS", "Config", "allreduce_fit",
    "allreduce_time", "bubble_rows", "bus_factor", "dp_row", "direction", "floor_notes", "gpu_story",
    "granularity_rows",
    "interconnect", "kill_demo", "killed_worker", "lesson_config", "lesson_worker", "link_need", "meaning",
    "memory_rows", "one_device_name", "pick_device", "plot_allreduce", "plot_bubble", "plot_granularity", "plot_tp",
    "reference_rows", "refusals", "rounds_of", "rounds_together", "run", "shape", "solo_name", "split_fractions",
    "sweep_config", "prediction_check", "tp_decode_line", "tp_story", "tp_table",
]
