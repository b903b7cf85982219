"""The offline corpus: the Python standard library's own source, which every Python install carries.

The split is by file and deterministic (a hash of the path relative to the stdlib), so the same files are
held out on every machine. The held-out text the course measures quality on is committed under
`data/eval/` instead of being read from the installed stdlib, so quality numbers do not move when the
learner's Python version does.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

EOT = "<|endoftext|>"
HELDOUT_EVERY = 40  # about 2.5% of files are held out


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_heldout(rel: str) -> bool:
    return int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) % HELDOUT_EVERY == 0


def stdlib_files(split: str) -> list[tuple[str, str]]:
    """(relative path, text) of every stdlib .py file on the given side of the split, sorted by path."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    root = stdlib_dir()
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "dist-packages/")) or "/site-packages/" in rel:
            continue
        if _is_heldout(rel) != (split == "heldout"):
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            out.append((rel, text))
    return out


def join_documents(docs: list[tuple[str, str]], budget_chars: int | None = None) -> str:
    """Concatenate files with the end-of-text separator, stopping at whole files within the budget."""
    parts, total = [], 0
    for rel, text in docs:
        piece = f"# file: {rel}\n{text}{EOT}"
        if budget_chars is not None and total + len(piece) > budget_chars and parts:
            break
        parts.append(piece)
        total += len(piece)
    return "".join(parts)
