"""Peak memory of one call, on the CPU and on CUDA, and what the KV cache really holds.

Peak memory is the most bytes a call held at once beyond what was live when it started (its inputs and the
model's weights are not counted; what it returns is). How it is read:
- CUDA: the caching allocator's own counters (`torch.cuda.reset_peak_memory_stats`, `max_memory_allocated`).
- CPU: PyTorch has no such counter, so `peak_during` switches on the profiler's memory events: every block
  PyTorch's CPU allocator hands out or takes back during the call (inside fused and compiled kernels too),
  summed in order; the peak of that running sum. It counts tensors, not the process: the allocator's own
  caching, Python objects and freed pages that glibc keeps do not show. `rss_peak_during` reads the process's
  resident-set high-water mark (Linux VmHWM, reset before the call) for the process view.

KV cache: `cache_bytes` sums the tensors a transformers Cache holds; `Int8KVCache` stores keys and values as
int8 with one scale per token and head (the memory saving and the quality cost are the lesson's to measure).
The formula is `models.ShapeSpec.kv_bytes_per_token` / `roofline.kv_cache_bytes`, never restated here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Peak:
    """Bytes: `peak` above the start, `net` still allocated at the end (what the call kept), `method` how."""

    peak: int
    net: int
    method: str
    device: str

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak, "net_bytes": self.net, "method": self.method, "device": self.device}


CPU_METHOD = "profiler: PyTorch CPU allocator events"
CUDA_METHOD = "torch.cuda max_memory_allocated"


def quiet_profiler() -> None:
    """Silence Kineto's "profiler_start"/"profiler_stop" lines before a torch.profiler run: it prints them to
    stderr on every profile (at C++ level, so a notebook shows them); level 6 silences only those lines. A
    learner's own KINETO_LOG_LEVEL is kept."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")


def _cpu_peak(fn: Callable[[], object]) -> tuple[object, Peak]:
    from torch.profiler import ProfilerActivity, profile

    quiet_profiler()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name == "CPU")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return out, Peak(peak, live, CPU_METHOD, "cpu")


def _cuda_peak(fn: Callable[[], object], device) -> tuple[object, Peak]:
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    out = fn()
    torch.cuda.synchronize(dev)
    return out, Peak(torch.cuda.max_memory_allocated(dev) - base, torch.cuda.memory_allocated(dev) - base,
                     CUDA_METHOD, str(device))


def peak_during(fn: Callable[[], object], device="cpu") -> tuple[object, Peak]:
    """Run `fn()` once and return (its result, the Peak of memory it allocated on `device`)."""
    if str(device).startswith("cuda"):
        return _cuda_peak(fn, device)
    return _cpu_peak(fn)


def rss_peak_during(fn: Callable[[], object]) -> tuple[object, int | None]:
    """Run `fn()` and return (its result, growth of the process's peak resident memory above its resident
    memory at the start, bytes). Linux only (None elsewhere). Pages that glibc kept from earlier frees are
    reused without growing the RSS, so this can read lower than `peak_during`, never the allocator's view."""
    from labkit.core.storage import proc_status_kib, reset_peak_rss

    if not os.path.exists("/proc/self/status"):
        return fn(), None
    reset_peak_rss()
    rss0 = proc_status_kib("VmRSS")
    out = fn()
    return out, max(0, proc_status_kib("VmHWM") - rss0) * 1024


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux), bytes."""
    from labkit.core.storage import proc_status_kib

    return proc_status_kib("VmRSS") * 1024 if os.path.exists("/proc/self/status") else None


# ---------------------------------------------------------------- CUDA: what empty_cache() does

def cuda_empty_cache_effect(fn: Callable[[], object], device="cuda") -> dict:
    """Allocated and reserved bytes after `fn()` (a forward pass), then after `torch.cuda.empty_cache()`,
    and the peak of `fn()`. empty_cache returns the allocator's cached, unused blocks to the driver: the
    reserved figure drops, the allocated one and the peak already reached do not."""
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_empty_cache_effect needs CUDA")
    dev = torch.device(device)
    out, peak = _cuda_peak(fn, dev)
    del out
    after = {"allocated": torch.cuda.memory_allocated(dev), "reserved": torch.cuda.memory_reserved(dev)}
    torch.cuda.empty_cache()
    emptied = {"allocated": torch.cuda.memory_allocated(dev), "reserved": torch.cuda.memory_reserved(dev)}
    return {"peak_bytes": peak.peak, "allocated_before": after["allocated"], "reserved_before": after["reserved"],
            "allocated_after": emptied["allocated"], "reserved_after": emptied["reserved"]}


# ---------------------------------------------------------------- the KV cache

def cache_bytes(cache) -> int:
    """Bytes of every tensor a transformers Cache's layers hold (keys, values, and quantized data and
    scales), each storage counted once."""
    seen, total = set(), 0

    def add(t) -> None:
        nonlocal total
        if isinstance(t, (tuple, list)):
            for x in t:
                add(x)
        elif isinstance(t, torch.Tensor) and t.numel():
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()

    for layer in cache.layers:
        for name in ("keys", "values", "_quantized_keys", "_quantized_values"):
            add(getattr(layer, name, None))
    return total


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 over the last dimension (one head's vector of one token): codes and one scale each."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-8) / 127
    return torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8), scale.to(x.dtype)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(scale.dtype) * scale


def _int8_layer_class():
    from transformers.cache_utils import BaseQuantizedLayer

    class Int8KVLayer(BaseQuantizedLayer):
        """One layer's keys and values as int8 codes with a scale per (token, head). A new token's scale is
        its own, so appending never re-quantizes what is stored. Attention reads back what was stored: every
        update returns the dequantized cache, the current tokens included, as an int8-KV kernel would."""

        def _quantize(self, tensor):
            return quantize_int8(tensor)

        def _dequantize(self, q_tensor):
            return dequantize_int8(*q_tensor)

        def lazy_initialization(self, key_states, value_states) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.cumulative_length += key_states.shape[-2]
            new = [self._quantize(key_states), self._quantize(value_states)]
            if self._quantized_keys is not None:
                old = [self._quantized_keys, self._quantized_values]
                new = [tuple(torch.cat([a, b], dim=-2) for a, b in zip(o, n, strict=True))
                       for o, n in zip(old, new, strict=True)]
            self._quantized_keys, self._quantized_values = new
            return self._dequantize(self._quantized_keys), self._dequantize(self._quantized_values)

    return Int8KVLayer


def int8_kv_cache(num_layers: int):
    """A transformers Cache whose layers store K and V in int8 (see Int8KVLayer); pass it as
    `past_key_values=` to a forward or to `generate`."""
    from transformers.cache_utils import Cache

    layer = _int8_layer_class()
    return Cache(layers=[layer() for _ in range(num_layers)])


def kv_cache_kinds() -> dict[str, str | None]:
    """The KV caches this machine can build, with None, or the reason one cannot be built: transformers'
    QuantizedCache backends (quanto and HQQ need their packages; fp8 is built in) and labkit's int8."""
    import importlib.util

    return {"fp (DynamicCache)": None, "int8 (labkit, per token and head)": None,
            "fp8 (transformers QuantizedCache, per tensor)": None
            if hasattr(torch, "float8_e4m3fn") else "this torch has no float8_e4m3fn dtype",
            "quanto int4 (transformers QuantizedCache)": None if importlib.util.find_spec("optimum") and
            importlib.util.find_spec("optimum.quanto") else "optimum-quanto is not installed",
            "hqq int4 (transformers QuantizedCache)": None if importlib.util.find_spec("hqq")
            else "hqq is not installed"}


def make_cache(kind: str, model):
    """A fresh cache of `kind` (a key of kv_cache_kinds) for `model`; raises RuntimeError naming why where
    this machine cannot build it."""
    from transformers import DynamicCache, QuantizedCache

    kinds = kv_cache_kinds()
    if kind not in kinds:
        raise ValueError(f"unknown KV cache kind {kind!r}; choose one of {list(kinds)}")
    if kinds[kind]:
        raise RuntimeError(kinds[kind])
    cfg = model.config
    if kind.startswith("fp ("):
        return DynamicCache(config=cfg)
    if kind.startswith("int8"):
        return int8_kv_cache(cfg.num_hidden_layers)
    backend = kind.split()[0]
    return QuantizedCache(backend=backend, config=cfg)
