"""Notebook 04's side of the launch: start the ranks once for the whole lesson (`run`), and kill one on purpose.

Process start-up is the costly part, so `run` launches `workers.lesson_worker` once and returns rank 0's results
with the launch's wall time and the machine's load over it; `kill_demo` shows what the launcher says when a rank
is killed from outside, and that no rank process is left.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from labkit.lessons.parallelism.config import Config
from labkit.lessons.parallelism.workers import killed_worker, lesson_worker
from labkit.techniques import parallel


def kill_demo(world_size: int = 2) -> dict:
    """A rank dies mid-run: what the launcher says, and how many rank processes are left (none). On CPU cores:
    this is about processes, not devices."""
    try:
        parallel.launch(killed_worker, world_size, timeout_s=120)
        error = "(no error: the rank was not killed)"
    except parallel.RankFailed as e:
        error = str(e)
    return {"error": error, "rank processes still running": len(parallel.running_ranks())}


def run(cfg: Config) -> dict:
    """Start the ranks once, run `lesson_worker` on each and return rank 0's results with the launch's details
    and the machine's load over the whole run (the ranks are this process's children, so they count as ours)."""
    from labkit.core.bench import LoadWatch

    cfg.check()
    t0 = time.perf_counter()
    with LoadWatch() as watch:
        results = parallel.launch(lesson_worker, cfg.world_size, asdict(cfg), device=cfg.device,
                                  desc=f"{cfg.world_size} ranks ({parallel.BACKENDS[cfg.device]})")
    res = results[0]
    res["wall_s"] = time.perf_counter() - t0
    res["load"] = watch.result
    return res
