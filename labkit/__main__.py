"""Command line for the course.

  python -m labkit course [--preset ci|full] [--only 00,02] [-p name=value ...] [--params ci/params.json]
  python -m labkit fingerprint [--json]
  python -m labkit report [--single-file] [--out FILE]
  python -m labkit train-tiny [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _course(args) -> int:
    from labkit.course import CourseError, load_params_file, parse_param, run_course
    from labkit.params import ParamError

    try:
        params = load_params_file(args.params) if args.params else {}
        params.update(dict(parse_param(p) for p in args.param))
        if "preset" in params:
            raise ParamError("give the preset with --preset, not as a parameter")
        run = run_course(args.preset, args.only, params, args.reports)
    except (CourseError, ParamError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in run.runs if r.error]
    total = sum(r.seconds for r in run.runs)
    print(f"{len(run.runs) - len(failed)} notebook(s) ran, {len(failed)} failed, {total:.0f} s in all")
    from labkit.records import reports_dir

    print(f"report: {(Path(args.reports) if args.reports else reports_dir()) / 'index.html'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit", description="The local-LLM speed course's tools.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("course", help="execute the notebooks headlessly into reports/")
    c.add_argument("--preset", default="ci", help="ci (small, fast; default) or full (realistic sizes)")
    c.add_argument("--only", default=None, help="comma-separated notebook ids, e.g. 00,02")
    c.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a notebook parameter (value read as JSON when it parses)")
    c.add_argument("--params", type=Path, default=None, help="JSON file of parameters (e.g. ci/params.json)")
    c.add_argument("--reports", type=Path, default=None, help="output folder (default: reports/)")
    f = sub.add_parser("fingerprint", help="print this machine's features that decide LLM speed")
    f.add_argument("--json", action="store_true")
    r = sub.add_parser("report", help="rebuild reports/index.html from what is in reports/")
    r.add_argument("--single-file", action="store_true",
                   help="also write one self-contained HTML (figures embedded) to send to someone")
    r.add_argument("--out", type=Path, default=None, help="where the single file goes (default: reports/)")
    t = sub.add_parser("train-tiny", help="retrain the embedded model (it is committed; ~40 min on 2 cores)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.cmd == "course":
        if args.preset not in ("ci", "full"):
            ap.error(f"unknown preset {args.preset!r}; choose ci or full")
        return _course(args)
    if args.cmd == "fingerprint":
        from labkit.hardware import describe, fingerprint

        fp = fingerprint()
        print(json.dumps(fp, indent=2) if args.json else describe(fp))
        return 0
    if args.cmd == "report":
        from labkit.report import write_index, write_single_file

        print(write_index())
        if args.single_file:
            print(write_single_file(out=args.out))
        return 0
    if args.cmd == "train-tiny":
        from labkit import DATA
        from labkit.train_tiny import TinyRecipe, train

        r = TinyRecipe() if args.steps is None else TinyRecipe(steps=args.steps)
        train(r, args.out or DATA / "models" / r.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
