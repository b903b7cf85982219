"""Progress bars that suit where the code runs: a live bar (a widget in Jupyter) for a person watching, and one
summary line per bar in a headless run (the course runner, CI), so executed notebooks keep no frozen "0%" bars.

    from labkit.core.progress import tqdm      # the same calls as tqdm.auto.tqdm
"""

from __future__ import annotations

import os
import time

HEADLESS_ENV = "LABKIT_HEADLESS"  # set by the course runner for the notebooks it executes


def headless() -> bool:
    return os.environ.get(HEADLESS_ENV) == "1"


class _Summary:
    """Counts like a tqdm bar and prints one line when it closes: '<desc>: 12/12 in 34 s'."""

    def __init__(self, iterable=None, desc: str | None = None, total: int | None = None, disable: bool = False,
                 **_):
        self.iterable, self.desc, self.disable = iterable, desc or "progress", disable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self._t0, self._closed = 0, "", time.perf_counter(), False

    def __iter__(self):
        try:
            for x in self.iterable:
                yield x
                self.n += 1
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        if self._closed or self.disable:
            return
        self._closed = True
        total = f"/{self.total}" if self.total is not None else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} in {time.perf_counter() - self._t0:.0f} s{extra}", flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tqdm(*args, **kwargs):
    """tqdm.auto.tqdm for a person (a widget in Jupyter, text in a terminal); one summary line when headless."""
    if headless():
        return _Summary(*args, **kwargs)
    from tqdm.auto import tqdm as _tqdm

    return _tqdm(*args, **kwargs)
