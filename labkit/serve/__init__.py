"""labkit.serve: a small continuous-batching engine over a paged KV cache, in the style of nano-vllm.

Single-purpose pieces, each readable on its own:
- `sequence`: `SamplingParams`, `Sequence` (a request, its tokens, timestamps and block table).
- `blocks`: `BlockManager`, the paged KV cache's bookkeeping (free list, reference counts, prefix cache).
- `scheduler`: `SchedulerConfig`, `Scheduler` (per-step admission, decode, preemption, rejection, cancel)
  and its output, `SchedulerOutput` / `ScheduledSeq`: everything a model runner needs for one step.
These three hold no tensors, so they are unit-tested without a model (tests/serve/).
- `runner`: `ModelRunner`, one forward over the step's tokens with attention over the paged KV cache.
- `engine`: `LLMEngine` / `EngineConfig`: add_request, step, cancel, stream, generate.
"""

from labkit.serve.blocks import Block, BlockManager
from labkit.serve.scheduler import ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput
from labkit.serve.sequence import SamplingParams, Sequence, SequenceStatus

__all__ = ["Block", "BlockManager", "SamplingParams", "ScheduledSeq", "Scheduler", "SchedulerConfig",
           "SchedulerOutput", "Sequence", "SequenceStatus"]
