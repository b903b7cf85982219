"""Starting and stopping the rank processes: `launch` runs `fn(ctx, *args)` on one spawned process per rank.

Each rank joins one process group (gloo on CPU cores, NCCL on CUDA GPUs) at 127.0.0.1 and gets its share of the
cores. The launcher watches every rank: one that raises or dies stops the others with an error naming it
(`RankFailed`), and no process is left running whatever happens (an error, a timeout, an interrupt). `fn` is
pickled by its module path, so it must be a module-level function of an importable module.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from labkit.techniques.parallel.checks import BACKENDS, RankFailed, check_world_size, cores


@dataclass
class RankContext:
    """What `fn` gets on each rank: its rank, the world, its device, the 1-D device mesh, and the cores it may
    use (`threads`) out of all the machine's (`cores`: `solo()` lends them all to one rank while the others
    wait in a collective, which blocks without spinning)."""

    rank: int
    world_size: int
    device: torch.device
    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    threads: int
    cores: int
    workdir: str

    @property
    def backend(self) -> str:
        return BACKENDS[self.device.type]

    @contextlib.contextmanager
    def solo(self):
        """Run the block with every core (one process alone, the baseline), then go back to this rank's share."""
        torch.set_num_threads(self.cores)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads)

    def progress(self, done: int, total: int, what: str) -> None:
        """Rank 0 tells the launching process how far it is (shown as a progress bar there)."""
        if self.rank == 0:
            _write_json(Path(self.workdir) / "progress.json", {"done": done, "total": total, "what": what})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for the rendezvous of one launch."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _entry(rank: int, world_size: int, port: int, device: str, threads: int, workdir: str, timeout_s: float,
           fn: Callable, args: tuple) -> None:
    """One rank: join the group, build the mesh, run `fn`, write its result (or its error) for the launcher."""
    import torch.distributed as dist

    out = Path(workdir)
    (out / f"started{rank}").touch()  # the launcher tells a crash while starting from a death later
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        torch.set_num_threads(threads)
        if device == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group(BACKENDS[device], rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device, (world_size,))
        dev = torch.device(device, rank) if device == "cuda" else torch.device("cpu")
        ctx = RankContext(rank, world_size, dev, mesh, threads, cores(), workdir)
        result = fn(ctx, *args)
        _write_json(out / f"rank{rank}.json", result)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - every failure must reach the launcher, then the process ends
        _write_json(out / f"error{rank}.json", {"time": time.time(), "error": f"{type(e).__name__}: {e}",
                                                "traceback": traceback.format_exc()})
        os._exit(1)  # no teardown: the peers are being stopped by the launcher anyway


def _stop(procs: list) -> None:
    """Terminate every live rank, then kill what is left, then join all: nothing keeps running."""
    procs = [p for p in procs if p.pid is not None]  # started ones (a failed start leaves the rest unstarted)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _root_cause(procs: list, workdir: Path, stopped: set[int], world_size: int) -> str:
    """The failure to report: a rank that died without a Python error (a signal, os._exit, the OOM killer) is the
    cause of its peers' errors; otherwise the earliest error any rank raised."""
    died = [r for r, p in enumerate(procs) if p.exitcode not in (0, None) and r not in stopped
            and not (workdir / f"error{r}.json").exists()]
    if died:
        r = died[0]
        if not (workdir / f"started{r}").exists():
            return (f"rank {r} of {world_size} failed while starting ({_how(procs[r].exitcode)}), before labkit's "
                    "rank code ran; its traceback is printed above. A script that launches ranks must guard its "
                    "own code with `if __name__ == '__main__':` (each rank imports the script again)")
        return (f"rank {r} of {world_size} died ({_how(procs[r].exitcode)}) without a Python error: killed from "
                "outside, out of memory, or a crash in native code")
    errors = []
    for r in range(world_size):
        f = workdir / f"error{r}.json"
        if f.exists():
            errors.append((json.loads(f.read_text()), r))
    if errors:
        err, r = min(errors, key=lambda e: e[0]["time"])
        return f"rank {r} of {world_size} failed: {err['error']}\n\n{err['traceback']}"
    return f"a rank of {world_size} failed without saying why (exit codes {[p.exitcode for p in procs]})"


def launch(fn: Callable, world_size: int, *args, device: str = "cpu", threads: int | None = None,
           timeout_s: float = 1800.0, desc: str | None = None) -> list:
    """Run `fn(ctx: RankContext, *args)` on `world_size` spawned processes and return their results in rank order
    (each must be JSON-serialisable). `fn` must be importable (a module-level function).

    Each rank joins one process group (gloo on the CPU, NCCL on CUDA) at 127.0.0.1 on a port free at launch, and
    gets `threads` cores (default: an equal share). If any rank raises or dies, the others are stopped and
    RankFailed names the rank and its error; after `timeout_s` every rank is stopped. `desc`: a progress bar of
    what rank 0 reports through `ctx.progress`."""
    check_world_size(world_size, device)
    threads = threads or max(1, cores() // world_size)
    workdir = Path(tempfile.mkdtemp(prefix="labkit-ranks-"))
    mp = multiprocessing.get_context("spawn")
    port = free_port()  # every rank meets rank 0 there
    procs = [mp.Process(target=_entry, args=(r, world_size, port, device, threads, str(workdir), timeout_s, fn,
                                             args), daemon=True)
             for r in range(world_size)]
    bar = None
    if desc:
        from tqdm.auto import tqdm

        bar = tqdm(total=1, desc=desc)
    stopped: set[int] = set()
    failure: str | None = None
    try:
        for p in procs:
            p.start()
        pending = {p.sentinel: r for r, p in enumerate(procs)}
        deadline = time.monotonic() + timeout_s
        while pending and failure is None:
            ready = multiprocessing.connection.wait(list(pending), timeout=0.5)
            for s in ready:
                r = pending.pop(s)
                procs[r].join()
                if procs[r].exitcode != 0:
                    failure = "failed"
                    break
            if bar is not None:
                _update_bar(bar, workdir / "progress.json")
            if pending and time.monotonic() > deadline and failure is None:
                failure = "timeout"
        if failure is not None:
            stopped = {r for r, p in enumerate(procs) if p.is_alive()}
    finally:
        _stop(procs)  # also on KeyboardInterrupt or any error in this loop
        if bar is not None:
            bar.close()
    try:
        if failure == "timeout":
            raise RankFailed(f"the {world_size} ranks did not finish within {timeout_s:g} s (still running: ranks "
                             f"{sorted(stopped)}); all were stopped")
        if failure is not None:
            raise RankFailed(_root_cause(procs, workdir, stopped, world_size)
                             + f"\nThe other ranks were stopped; all {world_size} processes have exited.")
        return [json.loads((workdir / f"rank{r}.json").read_text()) for r in range(world_size)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def running_ranks() -> list:
    """Rank processes of this process still running (spawned children; multiprocessing's resource tracker, which
    it starts once and keeps, is not one): what a launch must leave empty, whatever happened."""
    import psutil

    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                alive.append(p)
        except psutil.Error:
            pass
    return alive


def _update_bar(bar, path: Path) -> None:
    try:
        p = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if (bar.total, bar.n) == (p["total"], p["done"]):
        return
    bar.total = p["total"]
    bar.n = p["done"]
    bar.set_postfix_str(p["what"], refresh=False)
    bar.refresh()
