"""Tensor, pipeline and data parallelism with torch.distributed's own APIs: gloo on CPU cores, NCCL on CUDA GPUs.

- `launch(fn, world_size, *args)`: one process per rank (spawned, each with its share of the cores), `fn(ctx,
  *args)` on each, every rank's result back. A rank that fails stops the others with an error naming it; no
  process is left running, whatever happens (an error, a timeout, an interrupt).
- Tensor parallelism (Megatron-LM's split, as Hugging Face's own `tp_plan` for Llama writes it): `tensor_parallel`
  applies `parallelize_module` with q/k/v and gate/up column-wise and o/down row-wise, so each layer needs one
  all-reduce after attention and one after the MLP; the embedding is split by vocabulary rows (one all-reduce)
  and the head by vocabulary columns (one all-gather). `CommTimer` measures the time in those collectives.
- Pipeline parallelism: `pipeline` cuts the layers into equal contiguous stages (`StageModule`) and runs them as
  `torch.distributed.pipelining.PipelineStage`s under `ScheduleGPipe`, which splits a batch into micro-batches.
- Data parallelism for serving is plain replicas: every rank holds the whole model and serves its share of the
  requests (`replica_share`); nothing is communicated.

The checks (`check_world_size`, `check_tp`, `check_stages`, `check_microbatches`) run before any process starts,
so a configuration that cannot work fails at once with the constraint named.

The modules, one job each: `checks` (the checks and errors), `processes` (starting and stopping the ranks),
`tp` (tensor parallelism and its collectives), `generation` (greedy decoding, DP's replica share) and `pp`
(pipeline parallelism); this package re-exports their public names (`from labkit.techniques import parallel`).
"""

from labkit.techniques.parallel.checks import (
    BACKENDS,
    ParallelError,
    RankFailed,
    check_microbatches,
    check_stages,
    check_tp,
    check_world_size,
    cores,
    max_world_size,
)
from labkit.techniques.parallel.generation import Generation, cache_bytes, greedy, replica_share
from labkit.techniques.parallel.pp import StageModule, pipeline, pipeline_greedy, stage_module
from labkit.techniques.parallel.processes import RankContext, free_port, launch, running_ranks
from labkit.techniques.parallel.tp import CommTimer, collective_breakdown, comm_modules, tensor_parallel, tp_plan

__all__ = [
    "BACKENDS", "CommTimer", "Generation", "ParallelError", "RankContext", "RankFailed", "StageModule", "cache_bytes",
    "check_microbatches", "check_stages", "check_tp", "check_world_size", "collective_breakdown", "comm_modules",
    "cores", "free_port", "greedy", "launch", "max_world_size", "pipeline", "pipeline_greedy", "replica_share",
    "running_ranks", "stage_module", "tensor_parallel", "tp_plan",
]
