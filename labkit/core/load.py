"""How busy the machine is with other work while the course times something, and how many threads torch gets.

A shared laptop or CI runner is rarely idle, and an absolute time measured next to another busy process is that
process's as much as ours. `LoadWatch` records others' share of the CPU (and the load average) for every timed
block, so each record and notebook can say when it was measured on a loaded machine; `fit_threads` gives torch
only the cores others leave free. labkit.core.bench watches every round it runs with it.
"""

from __future__ import annotations

import os
import time


class LoadWatch:
    """How busy the machine was with *other* work while we timed something (a context manager).

    A shared laptop or CI runner is rarely idle: another process on one of two cores can slow a PyTorch path
    2-5x. Ratios measured side by side in rotating rounds survive that (both sides slow down alike); absolute
    times do not. `others_cpu_share` is the CPU time spent by processes other than this one and its children,
    as a fraction of all cores over the window (Linux /proc/stat; None elsewhere). The 1-minute load average
    before and after is recorded too, as `uptime` shows it."""

    BUSY_ABOVE = 0.10  # more than a tenth of the machine's cores used by others: say so

    def __init__(self):
        self.result: dict = {}

    @staticmethod
    def _busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        ticks = [int(x) for x in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        import psutil

        me = psutil.Process()
        total = sum(me.cpu_times()[:4])  # user, system, children's user and system (waited-for children)
        for child in me.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    def start(self) -> LoadWatch:
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy_s(), self._own_s()
        self._load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self

    def read(self) -> dict:
        """The load since `start()` (can be read several times; `result` keeps the last reading)."""
        wall = time.perf_counter() - self._t0
        busy1, own1 = self._busy_s(), self._own_s()
        share = None
        if self._busy0 is not None and busy1 is not None and wall > 0:
            others = (busy1 - self._busy0) - (own1 - self._own0)
            share = min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1))))
        self.result = {"loadavg_before": self._load0,
                       "loadavg_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                       "others_cpu_share": share, "seconds": wall,
                       "busy": bool(share is not None and share > self.BUSY_ABOVE)}
        return self.result

    def __enter__(self) -> LoadWatch:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.read()

    @property
    def warning(self) -> str | None:
        r = self.result
        if not r.get("busy"):
            return None
        return (f"another process used {r['others_cpu_share']:.0%} of the CPU while this was timed (load average "
                f"{r['loadavg_before']:.2f} -> {r['loadavg_after']:.2f}): ratios measured side by side still "
                "hold, absolute times are slower than on an idle machine")


def fit_threads(sample_s: float = 0.5) -> str | None:
    """Give torch only the cores other processes leave free, measured over `sample_s` (LoadWatch). OpenMP threads
    meet at a barrier after every operation, so one thread on a core another process holds stalls them all: on two
    cores with one busy, two threads run small operations several times slower than one thread does. Returns a
    line saying what changed, or None when nothing did (idle machine, or no /proc/stat)."""
    import torch

    cores = os.cpu_count() or 1
    w = LoadWatch().start()
    time.sleep(sample_s)
    share = w.read()["others_cpu_share"]
    have = torch.get_num_threads()
    if share is None:
        return None
    want = max(1, min(have, cores - round(share * cores)))
    if want >= have:
        return None
    torch.set_num_threads(want)
    return (f"other processes are using {share * cores:.1f} of {cores} cores: torch runs on {want} thread(s) instead "
            f"of {have}, so that no thread waits on a busy core at every operation (ratios stay side by side; "
            "absolute times are this loaded machine's)")
