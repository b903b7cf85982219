"""Greedy decoding over a static KV cache, optionally through torch.compile.

Hugging Face `generate` grows its KV cache every step, so every step has new shapes and a compiled model would
recompile. With a static cache (preallocated to the final length) every decode step has the same shapes: one
compilation for the prefill, one for the decode step, then every later token reuses them. This is the path
gpt-fast takes to make quantized kernels (torchao's int8) fast: the compiler fuses the quantize/dequantize
work that eager mode runs as many small kernels. The compile time is a cold start and is reported apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from labkit.core.bench import RequestTiming, sync

# ---------------------------------------------------------------- a CPU int8 matmul bug inductor trips over

def int_mm_row_stride_bug() -> bool:
    """True when this torch's CPU `torch._int_mm` returns wrong numbers for a one-row input whose row stride is
    0 (a legal layout for a dimension of size 1). Measured, not assumed: one 1x64 @ 64x32 product both ways.

    Why it matters: torch.compile (inductor) hands `_int_mm` exactly that layout when a decode step's activations
    (batch 1, one token: shape 1x1xK) are quantized to int8 inside the compiled graph, as torchao's
    int8-dynamic does; the compiled decode then returns garbage logits (wrong tokens at every step) while eager
    is right. Found in torch 2.13 on an Intel Xeon (AMX) and reproduced with plain torch ops."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (1, 64), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (32, 64), dtype=torch.int8, generator=g)
    good = torch._int_mm(x, w.t())
    return not torch.equal(torch._int_mm(x.as_strided((1, 64), (0, 1)), w.t()), good)


def _int_mm_fixed(a: torch.Tensor, b: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if a.dim() == 2 and a.shape[0] == 1 and a.stride(0) == 0:  # same memory, a stride the kernel handles
        a = a.as_strided(a.shape, (a.shape[1], a.stride(1)))
    return _INT_MM(a, b, *args, **kwargs)


_INT_MM = torch._int_mm
_PATCHED: list[str] = []


def work_around_int_mm_bug(device: str = "cpu") -> str | None:
    """If `int_mm_row_stride_bug()` holds on a CPU, route the `_int_mm` that inductor's generated code calls
    through a wrapper that gives a one-row input its ordinary stride (no copy: the row is the same memory).
    Returns a sentence saying what was done, or None when nothing was needed (a torch without the bug, a GPU).
    Only compiled code is affected: eager calls torch._int_mm directly, and no layout it makes has the bug."""
    if str(device).startswith("cuda"):
        return None
    if _PATCHED:
        return _PATCHED[0]
    if not int_mm_row_stride_bug():
        return None
    from torch._inductor import lowering  # noqa: F401  (registers the extern kernels)
    from torch._inductor.select_algorithm import extern_kernels

    if getattr(extern_kernels, "_int_mm", None) is None:
        return None
    extern_kernels._int_mm = _int_mm_fixed
    _PATCHED.append(f"worked around a bug in this torch ({torch.__version__}): its CPU torch._int_mm gives wrong "
                    "results for a one-row int8 input with row stride 0, the layout compiled int8-dynamic decode "
                    "steps pass it (labkit.techniques.decode.int_mm_row_stride_bug)")
    return _PATCHED[0]


# ---------------------------------------------------------------- what the compiler did

@dataclass
class CompileStats:
    """What torch.compile did in a stretch of code (from torch._dynamo's counters): frames compiled (a
    recompile is one more), graphs made, graph breaks and their first reasons. A decoder over a static cache
    should compile 2 frames (prefill and decode step) with no breaks, and nothing once warm."""

    frames: int = 0
    graphs: int = 0
    graph_breaks: int = 0
    reasons: list[str] = field(default_factory=list)

    def words(self) -> str:
        s = (f"{self.frames} frame(s) compiled, {self.graphs} graph(s), {self.graph_breaks} graph break(s)")
        return s + (f" (first: {self.reasons[0]})" if self.reasons else "")


class count_compiles:
    """`with count_compiles() as c: ...` then `c.stats` (a CompileStats) for what compiled inside."""

    def __enter__(self):
        self._before = self._snap()
        self.stats = CompileStats()
        return self

    @staticmethod
    def _snap() -> dict:
        from torch._dynamo.utils import counters

        return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
                "breaks": dict(counters["graph_break"])}

    def __exit__(self, *exc):
        after = self._snap()
        new = {k: v - self._before["breaks"].get(k, 0) for k, v in after["breaks"].items()}
        new = {k: v for k, v in new.items() if v > 0}
        self.stats = CompileStats(after["frames"] - self._before["frames"], after["graphs"] - self._before["graphs"],
                                  sum(new.values()), [k.splitlines()[0] for k in sorted(new, key=new.get,
                                                                                        reverse=True)][:3])
        return False


class StaticDecoder:
    """Greedy decoding of one request at a time with a preallocated cache of `max_len` tokens.

    `compile=True` wraps the forward in torch.compile (shapes are static, so it compiles once per phase).
    `options` are inductor settings for that compilation, e.g. {"freezing": True} (weights become constants,
    so inductor can fold them and prepack them for oneDNN on a CPU) or {"cpp_wrapper": True} (the code that
    calls the kernels is C++ instead of Python: less overhead per step); they need `compile=True`.
    `workaround`: a sentence when compiling needed labkit's fix for a torch bug (see work_around_int_mm_bug)."""

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
        dev = next(model.parameters()).device
        self.workaround = work_around_int_mm_bug(dev.type) if compile else None
        self.eager_prefill = False  # choose_prefill() may set it: the prompt's forward then runs eager
        self.prefill_choice: dict | None = None
        self._fwd = (torch.compile(self._forward, dynamic=False, options=self.options or None) if compile
                     else self._forward)
        if compile:  # the cache allocates itself on first use; do that eagerly, or the compiled graph's
            with torch.inference_mode():  # guards would change after the first call and force a recompile
                self._forward(torch.zeros(1, 1, dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long,
                                                                                           device=dev))

    def step(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One forward through the cache: `ids` at cache positions `pos`, the last position's logits (compiled
        where this decoder compiles; an eager prefill where `choose_prefill` found it faster)."""
        if not self.compiled or (ids.shape[1] > 1 and self.eager_prefill):
            return self._forward(ids, pos)
        import torch._dynamo.config as dynamo_config

        with dynamo_config.patch(recompile_limit=max(self.RECOMPILE_LIMIT, dynamo_config.recompile_limit)):
            return self._fwd(ids, pos)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, cache_position=pos, past_key_values=self.cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1]

    @torch.inference_mode()
    def choose_prefill(self, input_ids: torch.Tensor, repeats: int = 2) -> dict:
        """Time the prompt's forward compiled and eager (after both are warm, alternating, best of `repeats`)
        and keep the faster for prefill; decode steps stay compiled. A compiler that speeds up a one-token step
        can slow a 512-token one (a weight-only int8 matmul it generates itself instead of calling a tuned
        GEMM), and which way it goes depends on the kernel and the machine, so it is measured, not assumed.
        Returns {"compiled_ms", "eager_ms", "prefill": "compiled" | "eager"}."""
        if not self.compiled:
            raise ValueError("choose_prefill needs compile=True")
        n, dev = input_ids.shape[1], input_ids.device
        pos = torch.arange(n, device=dev)
        times: dict[str, list[float]] = {"compiled": [], "eager": []}
        for _ in range(repeats + 1):  # the first round warms both (it may compile) and is not counted
            for mode in ("compiled", "eager"):
                self.cache.reset()
                self.eager_prefill = mode == "eager"
                sync(dev)
                t0 = time.perf_counter()
                self.step(input_ids.clone(), pos).argmax(-1).tolist()
                times[mode].append(time.perf_counter() - t0)
        best = {k: min(v[1:]) * 1e3 for k, v in times.items()}
        self.eager_prefill = best["eager"] < best["compiled"]
        self.prefill_choice = {"compiled_ms": best["compiled"], "eager_ms": best["eager"],
                               "prefill": "eager" if self.eager_prefill else "compiled"}
        return self.prefill_choice

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> tuple[RequestTiming, torch.Tensor]:
        """Exactly `new_tokens` greedy tokens (EOS ignored, as in labkit.core.bench.generate_timed), with a
        timestamp per token. Returns the timing and prompt + output ids, like `generate`; the logits each step
        chose from stay in `last_logits` (one 1 x vocab tensor per output token) until the next call."""
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
        self.last_logits = [self.step(input_ids, torch.arange(n, device=dev))]
        tok = self.last_logits[-1].argmax(-1, keepdim=True)
        for i in range(new_tokens):
            out.append(tok)
            tok.tolist()  # wait for the device before stamping
            times.append(time.perf_counter())
            if i + 1 < new_tokens:
                self.last_logits.append(self.step(tok, torch.tensor([n + i], device=dev)))
                tok = self.last_logits[-1].argmax(-1, keepdim=True)
        rt = RequestTiming(start=start, token_times=times, prompt_tokens=n)
        return rt, torch.cat([input_ids, *out], dim=1)


@torch.inference_mode()
def profile_decode(run, ids: torch.Tensor, new_tokens: int = 8, top: int = 8) -> list[dict]:
    """Where the time of decode steps goes, kernel by kernel: torch.profiler around `run(ids, new_tokens)` (a
    StaticDecoder's or generate_timed-like call), ops sorted by their own CPU time, with calls and ms per decoded
    token. The rows' total is the profiled time, the share is of that total. The prefill is inside the profile
    too; keep `ids` short so the decode steps dominate."""
    from torch.profiler import ProfilerActivity, profile

    run(ids, 2)  # warm: compiled graphs and caches exist before the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(ids, new_tokens)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"op": e.key, "calls per token": e.count / new_tokens,
             "ms per token": e.self_cpu_time_total / 1e3 / new_tokens, "share": e.self_cpu_time_total / total}
            for e in events[:top]]
    rest = total - sum(e.self_cpu_time_total for e in events[:top])
    rows.append({"op": "(everything else)", "calls per token": sum(e.count for e in events[top:]) / new_tokens,
                 "ms per token": rest / 1e3 / new_tokens, "share": rest / total})
    return rows
