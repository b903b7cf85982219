"""Storage: how fast this machine's disk reads and writes, and how a model's weights are best loaded (claim C4).

A model has to reach memory before it can answer: `probe_disk` measures the disk cold and warm, and
`probe_loading` times safetensors' mmap, pread and read-then-copy, each in a fresh process, with the memory each
one's copies cost (read from /proc). Notebook 01 stores both in the machine's profile.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from labkit.core.bench import time_callable
from labkit.core.units import MiB


def _evict(path: Path) -> bool:
    """Ask the kernel to drop `path` from the page cache (no root needed for clean pages), so the next read
    comes from the disk. False where the OS has no posix_fadvise. Under a VM the host may still cache it."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _read_all(path: Path, chunk: int = 16 * MiB) -> int:
    buf = bytearray(chunk)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while (got := f.readinto(buf)) > 0:
            total += got
    return total


def probe_disk(folder: Path, mib: int = 256, repeats: int = 3) -> dict:
    """Write a `mib` MiB file of random bytes in `folder` (fsync'd), read it back after evicting it from the
    page cache (cold: the disk) and again from the page cache (warm: memory). The file is deleted after."""
    import tempfile

    folder = Path(folder)
    block = os.urandom(MiB)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".labkit-disk-probe-")
    path = Path(name)
    try:
        t0 = time.perf_counter()
        with os.fdopen(fd, "wb") as f:
            for _ in range(mib):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        write_s = time.perf_counter() - t0
        cold = []
        for _ in range(repeats):
            evicted = _evict(path)
            t0 = time.perf_counter()
            _read_all(path)
            cold.append(time.perf_counter() - t0)
        warm = time_callable(lambda: _read_all(path), warmup=1, repeats=repeats)
    finally:
        path.unlink(missing_ok=True)
    nbytes = mib * MiB
    cold_s = float(np.median(cold))
    return {"folder": str(folder), "bytes": nbytes, "write_gbps": nbytes / write_s / 1e9,
            "cold_read_gbps": nbytes / cold_s / 1e9, "warm_read_gbps": nbytes / warm.median_s / 1e9,
            "evicted_with_fadvise": evicted}


LOAD_METHODS = ("mmap", "pread", "read")


def proc_status_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(m.group(1)) if m else 0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); ru_maxrss cannot be reset
    and, after fork + exec, still holds the parent's peak. False where it could not (then VmHWM counts from
    process start: still a peak, only less tight)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _touch(tensors: dict) -> None:
    """Read one byte of every 4 KiB page of every tensor: a lazily mapped file is really loaded after this."""
    for t in tensors.values():
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else t
        flat[::4096].sum()


def load_in_this_process(path: str, method: str, repeats: int = 3) -> dict:
    """Load a .safetensors file `repeats + 1` times with `method`, touching every page each time:
    the first after evicting the file from the page cache (cold, from disk), then warm. Memory growth is
    read from /proc: anonymous memory is a private copy of the weights, file-backed memory is the page
    cache mapped in place (shared, no copy); the peak is the RSS high-water mark above the start. Run it in a
    fresh process: see `probe_loading`."""
    import gc

    from safetensors.torch import load, load_file

    def do_load():
        if method == "mmap":
            return load_file(path)
        if method == "pread":
            return load_file(path, backend="pread")
        if method == "read":
            with open(path, "rb") as f:
                return load(f.read())
        raise ValueError(f"unknown load method {method!r}; choose one of {list(LOAD_METHODS)}")

    reset_peak_rss()
    rss0, anon0, file0 = proc_status_kib("VmRSS"), proc_status_kib("RssAnon"), proc_status_kib("RssFile")
    times = []
    for i in range(repeats + 1):
        if i == 0:
            _evict(Path(path))
        t0 = time.perf_counter()
        sd = do_load()
        _touch(sd)
        times.append(time.perf_counter() - t0)
        if i == 0:
            anon, filem = proc_status_kib("RssAnon") - anon0, proc_status_kib("RssFile") - file0
        del sd
        gc.collect()
    peak = proc_status_kib("VmHWM") - rss0
    return {"method": method, "file_bytes": os.path.getsize(path), "first_s": times[0],
            "repeat_s": float(np.median(times[1:])), "anon_growth_bytes": anon * 1024,
            "file_mapped_bytes": filem * 1024, "peak_rss_growth_bytes": peak * 1024}


def probe_loading(path: Path, methods: tuple[str, ...] = LOAD_METHODS, repeats: int = 3) -> list[dict]:
    """Load time of a safetensors file per method, each in a fresh Python process so that peak memory and
    the cold first load are its own (claim C4). Bytes copied in user memory: mmap 0 (pages are mapped),
    pread 1 (file -> tensors), read 2 (file -> bytes object -> tensors)."""
    import json
    import subprocess
    import sys

    copies = {"mmap": 0, "pread": 1, "read": 2}
    out = []
    for method in methods:
        code = ("import json, sys; from labkit.core.storage import load_in_this_process as f; "
                "print(json.dumps(f(sys.argv[1], sys.argv[2], int(sys.argv[3]))))")
        res = subprocess.run([sys.executable, "-c", code, str(path), method, str(repeats)], capture_output=True,
                             text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"loading {path} with {method} failed:\n{res.stderr[-2000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["user_copies"] = copies[method]
        out.append(row)
    return out


def weights_file_for_loading(tmpdir: Path, fallback_shape: str = "tinyllama-1.1b", layers: int = 1) -> Path:
    """The embedded model's model.safetensors when it exists; otherwise a shape-faithful model's weights
    (seeded random, bf16) written to `tmpdir` with safetensors' save_file."""
    from labkit.core.models import EMBEDDED, MODELS_DIR, build

    embedded = MODELS_DIR / EMBEDDED / "model.safetensors"
    if embedded.exists():
        return embedded
    from safetensors.torch import save_file

    model = build(fallback_shape, layers=layers, dtype="bf16")
    path = Path(tmpdir) / f"{fallback_shape}-{layers}l.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
