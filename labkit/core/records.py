"""Results as JSON records with one schema, written atomically under reports/results/.

A record is {schema, experiment, config, metrics, fingerprint, versions, time}. Tables and plots in the
notebooks and the report are drawn from records, never from numbers typed in by hand.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path

from labkit import ROOT

SCHEMA = 1
REQUIRED = ("schema", "experiment", "config", "metrics", "fingerprint", "versions", "time")


def reports_dir() -> Path:
    """Where reports go: $LABKIT_REPORTS if set (tests, custom runs), else <repo>/reports."""
    return Path(os.environ.get("LABKIT_REPORTS") or ROOT / "reports")


def staging_dir() -> Path | None:
    """While the course runner executes a notebook, the records and figures it writes go to a staging folder
    ($LABKIT_STAGING) and are moved into reports/ only if the notebook succeeds: a failed run leaves nothing
    in the results that the index and later lessons read (its files stay with its executed copy)."""
    s = os.environ.get("LABKIT_STAGING")
    return Path(s) if s else None


def results_dir() -> Path:
    """Where new records are written: the staging folder during a course run, else reports/results."""
    return (staging_dir() or reports_dir()) / "results"


def _jsonable(x):
    """Make numpy/torch scalars, paths and dtypes JSON-friendly."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if hasattr(x, "item") and callable(x.item):
        try:
            return _jsonable(x.item())
        except (ValueError, RuntimeError):
            pass
    return str(x)


def make_record(experiment: str, config: dict, metrics: dict, fingerprint: dict | None = None) -> dict:
    """Build a record. The fingerprint is taken now if not given; versions are copied out of it."""
    if not experiment or not isinstance(experiment, str):
        raise ValueError("experiment must be a non-empty string")
    if fingerprint is None:
        from labkit.core.hardware import fingerprint as _fp

        fingerprint = _fp()
    return _jsonable({
        "schema": SCHEMA,
        "experiment": experiment,
        "config": config,
        "metrics": metrics,
        "fingerprint": fingerprint,
        "versions": fingerprint.get("versions", {}),
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
    })


def write_record(record: dict, root: Path | None = None) -> Path:
    """Write atomically (temp file + rename) to <root>/<experiment>/<time>-<hash>.json."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record lacks {missing}; build it with make_record()")
    root = Path(root) if root is not None else results_dir()
    folder = root / record["experiment"].replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, sort_keys=True)
    stamp = record["time"].replace(":", "").replace("-", "").replace("+0000", "Z")
    return atomic_write(folder / f"{stamp}-{hashlib.sha1(text.encode()).hexdigest()[:8]}.json", text)


def atomic_write(path: Path, data: str | bytes | None = None, write=None) -> Path:
    """Write a file so that a reader sees the old file or the whole new one, never half of it: write a temp
    file beside it, fsync, rename over. Give `data` (text or bytes), or `write(tmp_path)` for writers that take a
    path (matplotlib's savefig). A failure leaves no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        if write is not None:
            write(tmp)
        else:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save(experiment: str, config: dict, metrics: dict, root: Path | None = None) -> dict:
    """make_record + write_record in one call; returns the record (with its path under '_path')."""
    rec = make_record(experiment, config, metrics)
    path = write_record(rec, root)
    return {**rec, "_path": str(path)}


def read_records(root: Path | None = None, experiment: str | None = None) -> list[dict]:
    """Every record under `root` (default: reports/results, plus what the running notebook has staged)."""
    roots = [Path(root)] if root is not None else [reports_dir() / "results"] + (
        [staging_dir() / "results"] if staging_dir() else [])
    pattern = f"{experiment.replace('/', '_')}/*.json" if experiment else "*/*.json"
    out = []
    for p in sorted(q for r in roots if r.exists() for q in r.glob(pattern)):
        if p.name.startswith(".tmp-"):
            continue
        rec = json.loads(p.read_text())
        rec["_path"] = str(p)
        out.append(rec)
    out.sort(key=lambda r: (_dt.datetime.fromisoformat(r["time"]), r["_path"]))  # oldest first
    return out


def latest(experiment: str, root: Path | None = None) -> dict | None:
    """The newest record of `experiment` (times are stored to the microsecond, so of two records written in
    the same second the later one wins)."""
    recs = read_records(root, experiment)
    return recs[-1] if recs else None


def load_records(root: Path | None = None, experiment: str | None = None):
    """All records as a pandas DataFrame: one row each, config.* and metrics.* flattened into columns."""
    import pandas as pd

    rows = []
    for r in read_records(root, experiment):
        row = {"experiment": r["experiment"], "time": r["time"], "cpu": r["fingerprint"].get("cpu"),
               "path": r["_path"]}
        row.update(pd.json_normalize({"config": r["config"]}, sep=".").iloc[0].to_dict())
        row.update(pd.json_normalize({"metrics": r["metrics"]}, sep=".").iloc[0].to_dict())
        rows.append(row)
    return pd.DataFrame(rows)
