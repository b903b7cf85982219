"""The course runner: executes the notebooks headlessly with papermill into reports/.

    python -m labkit course                  # every notebook, preset "ci"
    python -m labkit course --preset full --only 00,02

Executed notebooks go to a temporary folder first and are moved into reports/notebooks/ only when they
succeed; so do the records and figures they write (staged, see labkit.core.records.staging_dir). A failing run
leaves nothing half-written in reports/: its executed copy, records and figures stay together in one folder
whose path is printed. A failure names the notebook and the failing cell with its error. Every selected
notebook's parameters are checked before the first one starts. The lessons, their notebooks and their order come
from labkit.course.catalog; after the run, labkit.course.report writes the index.

Before the first notebook the runner prints the plan (labkit.course.plan): the machine kind and each lesson's
expected time here; after each lesson, what it took against that estimate (its last line says so when it ran over
1.5x), and the seconds are stored (record `course_times`) for the next plan on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit import ROOT
from labkit.core.load import LoadWatch
from labkit.core.params import PRESETS, ParamError, check_preset
from labkit.core.records import atomic_write, reports_dir
from labkit.course import catalog
from labkit.course import plan as course_plan
from labkit.course.catalog import notebooks
from labkit.course.report import write_index

KERNEL_NAME = "labkit"


class CourseError(RuntimeError):
    """A notebook failed or the run was asked for something that does not exist."""


@dataclass
class NotebookRun:
    id: str
    name: str
    seconds: float
    output: Path | None = None
    html: Path | None = None
    error: str | None = None
    failed_copy: Path | None = None
    estimate_s: float | None = None  # what the plan expected here (labkit.course.plan), and from what
    estimate_source: str = ""
    others_cpu_share: float | None = None  # other processes' share of the CPU while it ran (LoadWatch)


@dataclass
class CourseRun:
    preset: str
    runs: list[NotebookRun] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.runs)


def select(only: str | list[str] | None) -> list[str]:
    """Validate a notebook selection like "00,02" and return the ids in teaching order."""
    available = notebooks()
    if not available:
        raise CourseError(f"no lesson of labkit/course/catalog.py has its notebook in {catalog.NOTEBOOKS_DIR}")
    if only is None or only == "" or only == []:
        return list(available)
    ids = [s.strip() for s in (only.split(",") if isinstance(only, str) else only) if s.strip()]
    if not ids:
        raise CourseError(f"--only {only!r} names no notebook; valid ids: {', '.join(available)}")
    ids = [i.zfill(2) if i.isdigit() else i for i in ids]
    unknown = [i for i in ids if i not in available]
    if unknown:
        raise CourseError(f"unknown notebook id(s) {unknown}; valid ids: {', '.join(available)} "
                          f"({', '.join(p.stem for p in available.values())})")
    return [i for i in available if i in ids]


def notebook_parameters(path: Path) -> dict:
    """The names and defaults declared in a notebook's cell tagged 'parameters'."""
    import papermill

    return {k: v.get("default") for k, v in papermill.inspect_notebook(str(path)).items()}


def ensure_kernel() -> str:
    """Register this interpreter as a Jupyter kernel inside its own prefix, so papermill runs the
    notebooks with the same Python (and the same venv) as the course runner."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="Python (labkit)", prefix=sys.prefix)
    return KERNEL_NAME


def _kernel_env(reports: Path, staging: Path) -> None:
    os.environ["LABKIT_REPORTS"] = str(reports)
    os.environ["LABKIT_STAGING"] = str(staging)
    # Jupyter's inline backend, so every figure shows in the executed notebook (a learner's MPLBACKEND=Agg would
    # leave empty cells); labkit.course.lesson.show also saves each one for the index.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ["LABKIT_HEADLESS"] = "1"  # progress bars print one line each instead of freezing at "0%"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' "Loading weights" bars, likewise
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _failure_message(nb_id: str, path: Path, exc: Exception) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        src = exc.source.strip().splitlines()
        first = src[0] if src else ""
        return (f"notebook {nb_id} ({path.name}) failed in cell {exc.cell_index} "
                f"(execution count {exc.exec_count}, starting `{first[:80]}`): {exc.ename}: {exc.evalue}")
    return f"notebook {nb_id} ({path.name}) failed: {exc.__class__.__name__}: {exc}"


DRAWS = ("lesson.show(", "plt.show(", "save_figure(")
WARNING_WORDS = ("Warning:", "WARNING", "warnings.warn")


def output_problems(ipynb: Path) -> list[str]:
    """What a learner would trip over in an executed notebook: a cell that draws a figure but shows none, a
    skip reason cut off by pandas ("skipped: ..." ending in an ellipsis), a library warning in the output, an
    object's repr instead of words (`PosixPath('...')`, a raw dict `{'k': ...}`, `<... object at 0x...>`), a
    number in e-notation (3.047e+04) or a raw byte count (62940720: eight digits or more, no separators)."""
    import re

    import nbformat

    reprs = (("a path's repr", re.compile(r"\b(?:Posix|Windows)?Path\(")), ("a raw dict", re.compile(r"\{'")),
             ("an object's repr", re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")))
    numbers = (("a number in e-notation", re.compile(r"(?<![\w.])\d+(?:\.\d+)?e[+-]\d+\b")),
               ("a raw count", re.compile(r"(?<![\w.,/:#-])\d{8,}(?![\w.,/:-])")))
    nb = nbformat.read(str(ipynb), as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outs = cell.get("outputs", [])
        if any(d in cell.source for d in DRAWS) and not any("image/png" in o.get("data", {}) for o in outs):
            problems.append(f"cell {i} draws a figure but shows none")
        for o in outs:
            text = o.get("text", "") if o.get("output_type") == "stream" else "".join(
                str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
            plain = o.get("text", "") if o.get("output_type") == "stream" else str(
                o.get("data", {}).get("text/plain", ""))  # what the learner reads (a table's text, not its HTML)
            if o.get("output_type") == "stream" and o.get("name") == "stderr" and any(
                    w in text for w in WARNING_WORDS):
                problems.append(f"cell {i} leaks a warning: {text.strip().splitlines()[0][:160]}")
            for line in text.splitlines():
                if "skipped:" in line and ("..." in line.split("skipped:", 1)[1] or "…" in line):
                    problems.append(f"cell {i} cuts a skip reason: {line.strip()[:160]}")
                    break
            for what, pattern in reprs + numbers if o.get("name") != "stderr" else ():  # stderr: logs, not lesson
                if m := pattern.search(plain):
                    line = next(x for x in plain.splitlines() if m.group(0) in x)
                    problems.append(f"cell {i} shows {what}: {line.strip()[:160]}")
    return problems


def try_this(nb_id: str) -> list[dict]:
    """The parameter sets a notebook's "Try this" section suggests: one dict per bullet that gives `-p name=value`
    options (values read as JSON where they parse, as on the command line). A bullet that starts "On a machine
    with" needs hardware this one may lack (more cores, a GPU), so it is not among those checked here."""
    import re

    import nbformat

    nb = nbformat.read(str(notebooks()[select([nb_id])[0]]), as_version=4)
    text = next((c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Try this")), "")
    out = []
    for bullet in re.split(r"\n\* ", text)[1:]:
        if "--only" in bullet or bullet.startswith("On a machine with"):  # another notebook's, or other hardware's
            continue
        opts = dict(parse_param(o.replace("'", "")) for o in re.findall(r"-p (\w+=(?:'[^']*'|\S+?))(?=`|\s)", bullet))
        if "--preset full" in bullet:
            opts["preset"] = "full"
        if opts:
            out.append(opts)
    return out


def check_try_this(nb_id: str, params: dict, reports: Path) -> str | None:
    """Run a notebook's parameters cell and its set-up cell (which checks every parameter) with `params` (preset
    ci unless they say otherwise): None if they are accepted, else the error. The suggestions of "Try this" stay
    valid this way without running each variant in full."""
    import nbformat

    params = {"preset": "ci", **params}
    path = check_parameters(nb_id, params)
    nb = nbformat.read(str(path), as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    setup = next(i for i in range(first + 1, len(nb.cells)) if nb.cells[i].cell_type == "code")
    nb.cells = nb.cells[: setup + 1]
    tmp = Path(tempfile.mkdtemp(prefix=f"labkit-try-{nb_id}-"))
    nbformat.write(nb, str(tmp / path.name))
    import papermill
    from papermill.exceptions import PapermillExecutionError

    saved = {k: os.environ.get(k) for k in ("LABKIT_REPORTS", "LABKIT_STAGING", "MPLBACKEND", "LABKIT_HEADLESS",
                                            "HF_HUB_DISABLE_PROGRESS_BARS")}
    _kernel_env(reports, tmp / "staged")
    try:
        papermill.execute_notebook(str(tmp / path.name), str(tmp / "out.ipynb"), parameters=params,
                                   kernel_name=ensure_kernel(), cwd=str(catalog.NOTEBOOKS_DIR), progress_bar=False)
    except PapermillExecutionError as e:
        return f"{e.ename}: {e.evalue}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)
    return None


def to_html(ipynb: Path, html: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(ipynb), as_version=4))
    return atomic_write(html, body)


def check_parameters(nb_id: str, parameters: dict) -> Path:
    """The notebook's path, once every name in `parameters` is one it declares (else ParamError)."""
    path = notebooks()[select([nb_id])[0]]
    declared = notebook_parameters(path)
    if not declared:
        raise CourseError(f"{path.name} has no cell tagged 'parameters'")
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ParamError(f"notebook {nb_id} ({path.name}) has no parameter(s) {unknown}; it takes: "
                         f"{', '.join(declared)}. Give a parameter only to the notebooks that take it (--only), "
                         f'or per notebook in a --params file: {{"{nb_id}": {{...}}}}')
    return path


def _land(staged: Path, reports: Path) -> None:
    """Move what a successful notebook staged (results/<experiment>/*.json, figures/*.png) into reports/."""
    for f in sorted(p for p in staged.rglob("*") if p.is_file()):
        dest = reports / f.relative_to(staged)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)


def run_notebook(nb_id: str, preset: str = "ci", params: dict | None = None, reports: Path | None = None,
                 timeout_s: int | None = None, progress: bool = True) -> NotebookRun:
    """Execute one notebook; on success its executed copy (and HTML), records and figures land in <reports>/.
    On failure they stay together in a temporary folder (`NotebookRun.failed_copy` is the executed copy)."""
    check_preset(preset)
    parameters = {"preset": preset, **(params or {})}
    path = check_parameters(nb_id, parameters)
    reports = Path(reports) if reports is not None else reports_dir()
    tmpdir = Path(tempfile.mkdtemp(prefix=f"labkit-{nb_id}-"))
    staged = tmpdir / "staged"
    saved_env = {k: os.environ.get(k) for k in ("LABKIT_REPORTS", "LABKIT_STAGING", "MPLBACKEND", "LABKIT_HEADLESS",
                                             "HF_HUB_DISABLE_PROGRESS_BARS")}
    _kernel_env(reports, staged)
    kernel = ensure_kernel()
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_tmp = tmpdir / path.name
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(path), str(out_tmp), parameters=parameters, kernel_name=kernel,
                                   cwd=str(catalog.NOTEBOOKS_DIR), progress_bar=progress,
                                   execution_timeout=timeout_s)
    except (PapermillExecutionError, RuntimeError, TimeoutError) as e:
        return NotebookRun(nb_id, path.stem, time.perf_counter() - t0, error=_failure_message(nb_id, path, e),
                           failed_copy=out_tmp if out_tmp.exists() else None)
    finally:
        for k, v in saved_env.items():  # the runner's own environment as it was
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    _land(staged, reports)
    dest = reports / "notebooks"
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / path.name
    shutil.move(str(out_tmp), final)
    html = to_html(final, final.with_suffix(".html"))
    shutil.rmtree(tmpdir, ignore_errors=True)
    return NotebookRun(nb_id, path.stem, seconds, output=final, html=html)


def course_plan_for(preset: str = "ci", only: str | list[str] | None = None, params: dict | None = None,
                    reports: Path | None = None, fp: dict | None = None) -> course_plan.Plan:
    """The plan of a run (machine kind, expected seconds per lesson), every parameter checked first."""
    check_preset(preset)
    ids = select(only)
    check_shared(ids, params)
    for nb_id in ids:  # every name checked before the first notebook starts
        check_parameters(nb_id, {"preset": preset, **params_for(nb_id, params)})
    reports = Path(reports) if reports is not None else reports_dir()
    # the machine's own rates are probed only when the fingerprint is this machine's, taken now
    return course_plan.make_plan(ids, preset, {i: params_for(i, params) for i in ids}, reports, fp,
                                 quick=course_plan.quick_rates if fp is None else None)


def run_course(preset: str = "ci", only: str | list[str] | None = None, params: dict | None = None,
               reports: Path | None = None, stop_on_error: bool = True, fp: dict | None = None) -> CourseRun:
    """Print the plan, run the selected notebooks in teaching order (each one's time against its estimate),
    then write reports/index.html. `fp`: the machine's fingerprint (taken now if None)."""
    reports = Path(reports) if reports is not None else reports_dir()
    plan = course_plan_for(preset, only, params, reports, fp)
    print("\n".join(plan.lines()), flush=True)
    ids = list(plan.estimates)
    run = CourseRun(preset)
    for k, nb_id in enumerate(ids, 1):
        name = notebooks()[nb_id].stem
        est = plan.estimates[nb_id]
        print(f"[{k}/{len(ids)}] {name} (preset {preset}; {est.short()}) ...", flush=True)
        watch = LoadWatch().start()  # others' share of the CPU while it runs: the first suspect when it runs over
        r = run_notebook(nb_id, preset, params_for(nb_id, params), reports)
        load = watch.read()
        r.estimate_s, r.estimate_source, r.others_cpu_share = est.seconds, est.source, load.get("others_cpu_share")
        run.runs.append(r)
        if r.error:
            print(f"      FAILED after {r.seconds:.0f} s: {r.error}", flush=True)
            if r.failed_copy:
                print(f"      the executed copy with the traceback, and what it wrote: {r.failed_copy.parent}",
                      flush=True)
            if stop_on_error:
                break
        else:
            print(f"      done in {r.seconds:.0f} s -> {r.output}", flush=True)
            course_plan.record_time(plan, est, r.seconds, params_for(nb_id, params), reports, load)
            print(f"      {course_plan.outcome_line(est, r.seconds, load)}", flush=True)
            if catalog.HARDWARE_PROFILE in catalog.lesson(nb_id).records:  # the profile is there now: scale by it
                for line in course_plan.replan(plan, reports, nb_id):
                    print(line, flush=True)
    write_index(reports, run)
    return run


def _shared(params: dict | None) -> dict:
    return {k: v for k, v in (params or {}).items() if not (k.isdigit() and isinstance(v, dict))}


def params_for(nb_id: str, params: dict | None) -> dict:
    """Parameters for one notebook: the shared ones it declares (`device` reaches the lessons that have one, not
    the ledger), overridden by those under its id ({"05": {...}}), which must all be its own."""
    params = params or {}
    declared = notebook_parameters(notebooks()[select([nb_id])[0]])
    shared = {k: v for k, v in _shared(params).items() if k in declared}
    return {**shared, **params.get(nb_id, {})}


def check_shared(ids: list[str], params: dict | None) -> None:
    """A shared parameter that none of the selected notebooks declares is a typo: say so before anything runs."""
    declared = set().union(*(notebook_parameters(notebooks()[i]) for i in ids)) if ids else set()
    unknown = sorted(set(_shared(params)) - declared)
    if unknown:
        raise ParamError(f"no selected notebook takes parameter(s) {unknown}; they take: {', '.join(sorted(declared))}")


def parse_param(text: str) -> tuple[str, object]:
    """'name=value' with value read as JSON when it parses (numbers, true/false, null, lists), else a string."""
    if "=" not in text:
        raise ParamError(f"parameter {text!r} must look like name=value")
    k, v = text.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def load_params_file(path: Path) -> dict:
    """A JSON file of notebook parameters (ci/params.json holds CI's)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ParamError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path} must hold a JSON object of parameters")
    return data


__all__ = ["PRESETS", "ROOT", "CourseError", "course_plan_for", "run_course", "run_notebook", "notebooks", "select"]
