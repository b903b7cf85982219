"""Greedy decoding over a static KV cache, optionally through torch.compile.

Hugging Face `generate` grows its KV cache every step, so every step has new shapes and a compiled model would
recompile. With a static cache (preallocated to the final length) every decode step has the same shapes: one
compilation for the prefill, one for the decode step, then every later token reuses them. This is the path
gpt-fast takes to make quantized kernels (torchao's int8) fast: the compiler fuses the quantize/dequantize
work that eager mode runs as many small kernels. The compile time is a cold start and is reported apart.
"""

from __future__ import annotations

import time

import torch

from labkit.bench import RequestTiming, sync


class StaticDecoder:
    """Greedy decoding of one request at a time with a preallocated cache of `max_len` tokens.

    `compile=True` wraps the forward in torch.compile (shapes are static, so it compiles once per phase).
    `options` are inductor settings for that compilation, e.g. {"freezing": True} (weights become constants,
    so inductor can fold them and prepack them for oneDNN on a CPU) or {"cpp_wrapper": True} (the code that
    calls the kernels is C++ instead of Python: less overhead per step); they need `compile=True`."""

    # torch.compile keeps one cache of compiled graphs per Python function, with room for 8 by default. Every
    # decoder shares `_forward`, and each model x phase (prefill, decode) is one graph, so a lesson comparing a
    # few compiled models would run out and silently fall back to eager: the limit is raised while we run.
    RECOMPILE_LIMIT = 64

    def __init__(self, model, max_len: int, compile: bool = False, options: dict | None = None):
        from transformers import StaticCache

        if options and not compile:
            raise ValueError("inductor options need compile=True")
        if options:
            import torch._inductor.config as inductor_config

            unknown = [k for k in options if not hasattr(inductor_config, k)]
            if unknown:
                raise ValueError(f"unknown inductor option(s) {unknown}; e.g. 'freezing', 'cpp_wrapper' "
                                 "(see torch._inductor.config)")

        self.model = model
        self.max_len = max_len
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.compiled = compile
        self.options = dict(options or {})
        self._fwd = (torch.compile(self._forward, dynamic=False, options=self.options or None) if compile
                     else self._forward)
        if compile:  # the cache allocates itself on first use; do that eagerly, or the compiled graph's
            with torch.inference_mode():  # guards would change after the first call and force a recompile
                dev = next(model.parameters()).device
                self._forward(torch.zeros(1, 1, dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long,
                                                                                           device=dev))

    def _step(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self._fwd(ids, pos)
        import torch._dynamo.config as dynamo_config

        with dynamo_config.patch(recompile_limit=max(self.RECOMPILE_LIMIT, dynamo_config.recompile_limit)):
            return self._fwd(ids, pos)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, cache_position=pos, past_key_values=self.cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> tuple[RequestTiming, torch.Tensor]:
        """Exactly `new_tokens` greedy tokens (EOS ignored, as in labkit.bench.generate_timed), with a
        timestamp per token. Returns the timing and prompt + output ids, like `generate`."""
        if input_ids.shape[0] != 1:
            raise ValueError("StaticDecoder decodes one request at a time (batch size 1)")
        n = input_ids.shape[1]
        if n + new_tokens > self.max_len:
            raise ValueError(f"prompt ({n}) + new tokens ({new_tokens}) exceed the cache ({self.max_len})")
        dev = input_ids.device
        input_ids = input_ids.clone()  # an inference tensor, like every later input: one set of guards
        self.cache.reset()
        sync(dev)
        start = time.perf_counter()
        times, out = [], []
        tok = self._step(input_ids, torch.arange(n, device=dev)).argmax(-1, keepdim=True)
        for i in range(new_tokens):
            out.append(tok)
            tok.tolist()  # wait for the device before stamping
            times.append(time.perf_counter())
            if i + 1 < new_tokens:
                tok = self._step(tok, torch.tensor([n + i], device=dev)).argmax(-1, keepdim=True)
        rt = RequestTiming(start=start, token_times=times, prompt_tokens=n)
        return rt, torch.cat([input_ids, *out], dim=1)
