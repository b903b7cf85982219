"""labkit.serve: a small continuous-batching engine over a paged KV cache, in the style of nano-vllm.

Single-purpose pieces, each readable on its own:
- `config`: `EngineConfig`, the engine's one configuration (every option, its default and its range).
- `sequence`: `SamplingParams`, `Sequence` (a request, its tokens, timestamps and block table).
- `blocks`: `BlockManager`, the paged KV cache's bookkeeping (free list, reference counts, prefix cache).
- `scheduler`: `Scheduler` (per-step admission, decode, preemption, rejection, cancel, under the policy its
  EngineConfig names) and its output, `SchedulerOutput` / `ScheduledSeq`: everything a model runner needs for
  one step. These hold no tensors, so they are unit-tested without a model (tests/serve/).
- `runner`: `ModelRunner`, one forward over the step's tokens with attention over the paged KV cache.
- `engine`: `LLMEngine` (`LLMEngine.from_model(model, config, **overrides)` builds one): add_request, step,
  cancel, stream, generate.
"""

from labkit.serve.blocks import Block, BlockManager
from labkit.serve.config import EngineConfig
from labkit.serve.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from labkit.serve.sequence import SamplingParams, Sequence, SequenceStatus

__all__ = ["Block", "BlockManager", "EngineConfig", "SamplingParams", "ScheduledSeq", "Scheduler",
           "SchedulerOutput", "Sequence", "SequenceStatus"]
