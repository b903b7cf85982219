"""The peers' memory column: each row reopened in a fresh process of its own, which serves one request while Linux
counts its resident memory.

A process per row, because the rows of `labkit peers` share one process while they are timed: what one runtime
holds and frees would be counted against the next. The child imports the row's runtime first and reads its
resident memory (`VmRSS`), opens the model (the converted files, or labkit's quantized copy of the same seeded
shape), reads it again, resets its peak (`/proc/self/clear_refs`, "5") and serves one request of the same prompt
length and new tokens; its peak (`VmHWM`) is then read. Reported, both less the memory after the imports (the
runtime's own libraries are not counted): `loaded MiB` (the model opened) and `peak MiB` (the most it held while
serving the request: weights, KV cache, activations and workspace). Linux only; elsewhere the columns are empty and
`unmeasured` says why.

Run as `python -m labkit.lessons.peer_memory '<json>'` by `measure` (an argument list, never a shell string).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
NOTE = ("memory: each row reopened in a process of its own after the rounds, serving one request of the same length; "
        "loaded MiB = resident after opening the model, peak MiB = the most resident while serving it, both less the "
        "process after importing its runtime (the libraries are not counted); a runtime that maps its files and reads "
        "them at the first request (OpenVINO) shows little loaded memory, so peak MiB is the column to compare")


def unmeasured() -> str | None:
    """Why memory cannot be measured here, or None."""
    return None if STATUS.exists() else "not measured: needs Linux's /proc (resident memory of a process)"


def _trim() -> None:
    """Hand the allocator's freed pages back to the system (glibc's malloc_trim), so that what a row freed while
    opening (an fp32 copy it quantized, a converter's buffers) is not counted as held; nothing elsewhere."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# The runner classes a child may open, by "module:class" (named, not imported, so that labkit.lessons.peers, which
# calls this module, is not imported by it: no import circle).
RUNNERS = frozenset({"labkit.lessons.peers:LlamaCppRunner", "labkit.lessons.peers:CT2Runner",
                     "labkit.lessons.peers_genai:OpenVINORunner", "labkit.lessons.peers_genai:ORTGenAIRunner"})


def reopen(engine: str, runner: type, path, **kwargs) -> dict:
    """How a child process opens a peer's row again: its engine, runner class (one of RUNNERS), files and options."""
    return {"engine": engine, "runner": f"{runner.__module__}:{runner.__name__}", "path": str(path), "kwargs": kwargs}


def _open(spec: dict):
    """The runner `spec` names, in this process: (generate callable, modules to import before the baseline)."""
    engine, kw = spec["engine"], dict(spec.get("kwargs") or {})
    if engine == "labkit":
        import torch

        from labkit.core import models
        from labkit.core.bench import generate_timed
        from labkit.lessons.quantization import SPEED_PREFERS_BF16, base_dtype
        from labkit.techniques.quant import quantize

        method = kw["method"]
        model = models.build(kw["shape"], layers=kw["layers"], seed=kw["seed"]).float().eval()
        base = base_dtype(method, "cpu", "bf16" if method in SPEED_PREFERS_BF16 else "fp32")
        if base == "bf16":
            model = model.to(torch.bfloat16)  # in place: one copy of the weights at a time
        if method not in ("fp32", "bf16"):  # every linear, the head included, as `labkit_paths` quantizes them
            model = quantize(model, method, skip=(), inplace=not method.startswith("bnb"))
        return lambda ids, n: generate_timed(model, ids, n)
    if spec.get("runner") not in RUNNERS:
        raise ValueError(f"unknown runner {spec.get('runner')!r} for {engine}; one of {sorted(RUNNERS)}")
    module, name = spec["runner"].split(":")
    return getattr(importlib.import_module(module), name)(spec["path"], **kw).generate


def child(spec: dict) -> dict:
    """In the child: import, open, serve one request; the resident memory at each point (MiB)."""
    import gc

    import torch

    from labkit.core.models import prompt_ids
    from labkit.core.storage import proc_status_kib as kib
    from labkit.core.storage import reset_peak_rss
    from labkit.lessons.peer_runtimes import MODULES

    torch.set_num_threads(spec["threads"])
    for mod in MODULES.get(spec["engine"], ()):
        importlib.import_module(mod)
    import transformers  # noqa: F401  (labkit's own runtime; the peers' checks import it too)

    _trim()
    base = kib("VmRSS")
    run = _open(spec)
    gc.collect()
    _trim()
    loaded = kib("VmRSS")
    reset = reset_peak_rss()
    ids = prompt_ids(spec["prompt_len"], vocab_size=spec["vocab_size"], seed=spec.get("seed", 0))
    with torch.inference_mode():
        run(ids, spec["new_tokens"])
    peak = kib("VmHWM")
    return {"loaded MiB": (loaded - base) / 1024, "peak MiB": (peak - base) / 1024,
            "peak from": "the request" if reset else "process start (its peak could not be reset)"}


def _serve_once(spec: dict, timeout_s: float) -> subprocess.CompletedProcess | None:
    """`child(spec)` in a fresh process (an argument list, never a shell string); None if it ran over `timeout_s`."""
    argv = [sys.executable, "-m", "labkit.lessons.peer_memory", json.dumps(spec)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return None


def measure(spec: dict, timeout_s: float = 600) -> dict:
    """`spec` ({engine, path or kwargs, threads, prompt_len, new_tokens, vocab_size}) served once in a fresh process:
    {"loaded MiB", "peak MiB", "peak from"}, or {"memory": "not measured: <why>"}."""
    if (why := unmeasured()) is not None:
        return {"memory": why}
    p = _serve_once(spec, timeout_s)
    if p is None:
        return {"memory": f"not measured: its process ran over {timeout_s:.0f} s"}
    last = (p.stdout.strip().splitlines() or [""])[-1]
    if p.returncode != 0 or not last.startswith("{"):
        err = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"memory": f"not measured: its process failed ({err[:200]})"}
    return json.loads(last)


def crashes(spec: dict, timeout_s: float = 600) -> str | None:
    """Why the row `spec` (reopen's, with threads, prompt_len, vocab_size) cannot serve one request of its prompt
    and 2 new tokens in a process of its own, or None when it can. A native runtime can kill its process (a
    segmentation fault is no Python error to catch), and the rows of `labkit peers` share one: a row that dies here
    is skipped with this reason instead of ending the whole run (llama.cpp's AMX backend on a Xeon with AMX)."""
    import signal

    p = _serve_once({**spec, "new_tokens": 2}, timeout_s)
    if p is None:
        return f"its process did not serve one request within {timeout_s:.0f} s"
    if p.returncode < 0:
        name = signal.Signals(-p.returncode).name if -p.returncode in signal.valid_signals() else -p.returncode
        return f"its process died of {name} serving a {spec['prompt_len']}-token prompt (a crash in native code)"
    if p.returncode != 0:
        return f"its process failed: {(p.stderr.strip().splitlines() or ['no output'])[-1][:200]}"
    return None


def of_rows(timed: list, spec: dict, prompt_len: int, new_tokens: int, vocab_size: int,
            progress: bool) -> dict[str, dict]:
    """{path: its memory serving one request in a fresh process (`measure`)} for the timed rows, one at a time,
    after the timed rounds (never beside them). labkit's compiled rows are not reopened: compiling again in a child
    costs minutes, and their weights are those of the eager row of the same method."""
    import torch

    from labkit.core.progress import tqdm

    out = {}
    for p in tqdm(timed, desc="memory, a process per row", disable=not progress):
        reopen = p.reopen
        if reopen is None and p.engine == "labkit" and not p.name.endswith("+compile"):
            reopen = {"engine": "labkit", "kwargs": {**spec, "method": p.name.removeprefix("labkit ")}}
        if reopen is None:
            out[p.name] = {"memory": "not measured: a compiled row would compile again in its own process; see its "
                                     "eager row" if p.name.endswith("+compile") else "not measured: cannot reopen"}
            continue
        out[p.name] = measure({**reopen, "threads": torch.get_num_threads(), "prompt_len": prompt_len,
                               "new_tokens": new_tokens, "vocab_size": vocab_size, "seed": spec["seed"]})
    return out


def least_line(table) -> str | None:
    """labkit's leanest row against the leanest peer, by peak memory serving one request; None without the column."""
    if "peak MiB" not in table:
        return None
    ok = table[table["peak MiB"].notna()]
    mine, theirs = (ok[ok["engine"] == "labkit"], ok[ok["engine"] != "labkit"])
    if mine.empty or theirs.empty:
        return f"memory, least against least: not measured ({'no peer' if theirs.empty else 'no labkit path'} ran)"
    a, b = (rows.loc[rows["peak MiB"].idxmin()] for rows in (mine, theirs))
    x = b["peak MiB"] / a["peak MiB"]
    return (f"memory, least against least: {a['path']} peaks at {a['peak MiB']:,.0f} MiB serving one request, the "
            f"leanest peer ({b['path']}) at {b['peak MiB']:,.0f} MiB ({x:.2f}x labkit's)")


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
