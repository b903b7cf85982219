"""The engine's one configuration: every option, its one default, its valid range, checked when it is made.

Before this module the engine had two configuration classes with different defaults (and three defaults for the
token budget), so the same words built different engines depending on the caller. Now `EngineConfig` is the only
one: the engine resolves what depends on the model (`resolved`: the context length, the KV blocks that fit the
byte budget, the token budget that follows the policy) and hands the same object to the scheduler, which reads
its part from it and has no defaults of its own. A value outside an option's range fails here, naming the option
and the range, never silently replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

ATTENTION = ("sdpa", "eager")  # the runner's attention kernels (labkit.serve.runner)
DEFAULT_BATCHED_TOKENS = 512  # tokens one step computes with chunked prefill, when not given
DEFAULT_KV_CACHE_BYTES = 1 << 30  # the KV cache's memory budget, when neither it nor num_blocks is given


def _check_int(name: str, value, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int{' or None' if optional else ''}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and where it keeps the KV cache.

    - `max_num_seqs`: requests running at once (the batch).
    - `max_num_batched_tokens`: tokens one step computes. None follows the policy: with chunked prefill
      max(DEFAULT_BATCHED_TOKENS, max_num_seqs); without, max(max_model_len, max_num_seqs), since a prefill is
      then never split and must fit one step.
    - `block_size`, `num_blocks`: the paged KV cache's geometry. `num_blocks=None` sizes the cache from
      `kv_cache_bytes` (None: DEFAULT_KV_CACHE_BYTES); giving both is refused, since one would be ignored.
    - `max_model_len`: the longest sequence (prompt + output) accepted; None takes the model's context length.
    - `enable_prefix_caching`: reuse the KV blocks of a prompt prefix already computed.
    - `enable_chunked_prefill`: split prompts across steps under the token budget.
    - `mixed_batches`: a step may hold prefill and decode work together (running requests keep decoding while new
      prompts are prefilled); False: a step is either all prefill or all decode, prefill first (nano-vllm's
      policy; with chunked prefill, SGLang's default).
    - `attention`: "sdpa" (PyTorch's fused kernel) or "eager" (matmul, softmax, matmul), see labkit.serve.runner.
    - `seed`: the sampling generator's seed (temperature > 0).
    """

    max_num_seqs: int = 16
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_bytes: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = False
    enable_chunked_prefill: bool = True
    mixed_batches: bool = True
    attention: str = "sdpa"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("max_num_seqs", self.max_num_seqs, 1)
        _check_int("max_num_batched_tokens", self.max_num_batched_tokens, 1, optional=True)
        _check_int("block_size", self.block_size, 1)
        _check_int("num_blocks", self.num_blocks, 1, optional=True)
        _check_int("kv_cache_bytes", self.kv_cache_bytes, 1, optional=True)
        _check_int("max_model_len", self.max_model_len, 1, optional=True)
        _check_int("seed", self.seed, 0)
        for name in ("enable_prefix_caching", "enable_chunked_prefill", "mixed_batches"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"unknown attention {self.attention!r}; choose one of {list(ATTENTION)}")
        if self.num_blocks is not None and self.kv_cache_bytes is not None:
            raise ValueError(f"give num_blocks ({self.num_blocks}) or kv_cache_bytes ({self.kv_cache_bytes}), not "
                             "both: num_blocks sizes the KV cache and the byte budget would be ignored")
        budget = self.max_num_batched_tokens
        if budget is not None and budget < self.max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({budget}) must be >= max_num_seqs ({self.max_num_seqs}): "
                             "every running sequence decodes one token per step")
        if (budget is not None and self.max_model_len is not None and budget < self.max_model_len
                and not self.enable_chunked_prefill):
            raise ValueError(f"max_num_batched_tokens ({budget}) must be >= max_model_len ({self.max_model_len}): "
                             "a prefill is not split across steps unless enable_chunked_prefill")

    @property
    def is_resolved(self) -> bool:
        """True when nothing is left to the model: what the scheduler needs."""
        return None not in (self.max_num_batched_tokens, self.num_blocks, self.max_model_len)

    def resolved(self, max_model_len: int, num_blocks: int) -> EngineConfig:
        """This configuration with every None filled in: `max_model_len` and `num_blocks` where not given (the
        model's context, the blocks that fit the byte budget), then the token budget the policy implies."""
        c = replace(self, max_model_len=self.max_model_len or max_model_len,
                    num_blocks=self.num_blocks or num_blocks, kv_cache_bytes=None)
        if c.max_num_batched_tokens is None:
            floor = DEFAULT_BATCHED_TOKENS if c.enable_chunked_prefill else c.max_model_len
            c = replace(c, max_num_batched_tokens=max(floor, c.max_num_seqs))
        return c

    @property
    def cache_bytes(self) -> int:
        """The KV cache's byte budget (used only when `num_blocks` is None)."""
        return DEFAULT_KV_CACHE_BYTES if self.kv_cache_bytes is None else self.kv_cache_bytes


OPTIONS = tuple(f.name for f in fields(EngineConfig))
