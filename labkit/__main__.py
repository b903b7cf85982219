"""Command line: python -m labkit {course,fingerprint,report,train-tiny}."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-tiny", help="train the embedded model (already committed; takes ~40 min)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "train-tiny":
        from labkit import DATA
        from labkit.train_tiny import TinyRecipe, train

        r = TinyRecipe() if args.steps is None else TinyRecipe(steps=args.steps)
        train(r, args.out or DATA / "models" / r.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
