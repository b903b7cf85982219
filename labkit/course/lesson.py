"""What every lesson notebook does at its start and end, so the notebooks stay short and alike:

    run = lesson.start("03_pruning", preset)   # the machine, the clock and the load, from the first cell
    lesson.show(fig, "03_quality_vs_speed")    # the figure inline in the notebook, and saved for the index
    lesson.table(speed, keys="label")          # a measured table at notebook width, in words with units
    run.save("03_pruning", config, metrics)    # a record; the run's load so far goes with it
    run.finish()                               # how long the notebook took and whether the machine was busy

The lesson's name and its record names must be those of labkit.course.catalog, the table the index and the claims
ledger read: a record under another name would be written and then never read, so it is refused at once.

A notebook that was timed while another process used the CPU says so, with the share it took: side-by-side
ratios still hold, absolute times do not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from labkit.core import records, tables
from labkit.core.bench import LoadWatch
from labkit.core.params import check_preset
from labkit.course import catalog


@dataclass
class Run:
    name: str
    preset: str
    lesson: catalog.Lesson | None = None  # the catalog's row (start fills it in): the records it may write
    started: float = field(default_factory=time.perf_counter)
    watch: LoadWatch = field(default_factory=lambda: LoadWatch().start())
    saved: list[str] = field(default_factory=list)
    finished: dict | None = None  # what finish() printed: seconds and the load

    def load(self) -> dict:
        """The machine's load since the notebook started (LoadWatch.read)."""
        return self.watch.read()

    def save(self, experiment: str, config: dict, metrics: dict) -> dict:
        """records.save with the preset in the config and the load so far in the metrics (`load`). `experiment`
        must be one of the lesson's records in the catalog (ValueError names them)."""
        if self.lesson is not None and experiment not in self.lesson.records:
            raise ValueError(f"lesson {self.name} writes the record(s) {', '.join(self.lesson.records)} "
                             f"(labkit/course/catalog.py), not {experiment!r}")
        rec = records.save(experiment, {"preset": self.preset, **config}, {**metrics, "load": self.load()})
        self.saved.append(rec["_path"])
        print(f"stored as the record {experiment} (under reports/results/{experiment}/ once the notebook succeeds)")
        return rec

    def finish(self) -> None:
        """Print the notebook's duration and load, and keep them in `self.finished` ({"seconds": ..., load...}).
        Returns None, so a notebook's last cell shows the sentence and no dict."""
        load = self.load()
        seconds = time.perf_counter() - self.started
        share = load.get("others_cpu_share")
        busy = ("the machine was otherwise idle" if share is not None and not load["busy"] else
                self.watch.warning if load["busy"] else "others' CPU use not measurable here")
        took = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
        print(f"{self.name} took {took} (preset {self.preset}); {busy}")
        self.finished = {"seconds": seconds, **load}


def start(name: str, preset: str, describe: bool = True) -> Run:
    """Begin a lesson: check its name against the catalog (its notebook's name, "03_pruning") and the preset, print
    the machine (labkit.core.hardware.describe) and start the clock and the load watch."""
    row = catalog.find(name)
    if row is None or name != row.notebook:
        raise ValueError(f"no lesson {name!r} in labkit/course/catalog.py; the lessons are "
                         f"{', '.join(les.notebook for les in catalog.LESSONS)}")
    check_preset(preset)
    if describe:
        from labkit.core.hardware import describe as _describe

        print(_describe())
    from labkit.core.bench import fit_threads

    if line := fit_threads():
        print(line)
    return Run(name, preset, row)


def show(fig, name: str) -> None:
    """Save `fig` for the index (reports/figures/<name>.png) and display it inline in the notebook, once. Returns
    None, so a cell that ends with it shows the figure and nothing else (the saved file is `figure_path(name)`)."""
    import matplotlib.pyplot as plt

    from labkit.course.report import save_figure

    save_figure(fig, name)
    _display(fig)
    plt.close(fig)


def figure_path(name: str):
    """Where `show(fig, name)` saved the figure (reports/figures/<name>.png, staged during a course run)."""
    from labkit.course.report import figures_dir

    return figures_dir() / f"{name}.png"


def table(df, keys=None, width: int = tables.WIDTH, digits: int | None = None) -> None:
    """Show a measured table at notebook width (labkit.core.tables.views): headers in words with units, numbers
    without e-notation, bytes in MiB/GiB, at most `width` columns to a part with the `keys` columns (default:
    the first) repeated in each, a one-row table on its side; long skip reasons as "[1]" marks, printed in full
    below; `digits` decimals where a lesson compares small differences. Returns None: the cell shows the table,
    not an object."""
    cut = tables.views(df, keys, width=width, digits=digits)
    for part in cut.parts:
        _display(part)
    for note in cut.notes:
        print(note)


def _display(obj) -> None:
    """IPython's display inside a notebook; print elsewhere (a script, a test) for a table, nothing for a figure."""
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(obj)
            return
    except ImportError:
        pass
    if hasattr(obj, "to_string"):
        print(obj.to_string())
