"""Real English for the general corpus: the docstrings of the Python standard library.

The Python standard library is distributed under the PSF License, which permits
redistribution; its docstrings are broad, plain technical English (descriptions, numbers,
names, instructions) that the generated general corpus lacks. The extraction is
deterministic for a given Python version (files and nodes in sorted order).

    python -m simulations.stdlib_corpus --out simulations/data/general/stdlib.txt
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["docstrings", "main"]

_SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__"}


def docstrings(stdlib: Path, *, min_words: int = 8) -> Iterator[str]:
    """Module, class and function docstrings of every stdlib module, cleaned to prose."""
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIP_PARTS & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in re.split(r"\n\s*\n", doc):
                lines = [ln.strip() for ln in para.splitlines()]
                if any(ln.startswith((">>>", "...", "$", "%")) for ln in lines):
                    continue  # code samples
                text = " ".join(ln for ln in lines if ln)
                if len(text.split()) >= min_words and "http" not in text:
                    yield text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("simulations/data/general/stdlib.txt"))
    p.add_argument("--max-chars", type=int, default=4_000_000)
    args = p.parse_args(argv)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    total = 0
    for doc in docstrings(stdlib):
        if doc in seen:
            continue
        seen.add(doc)
        out.append(doc)
        total += len(doc) + 2
        if total >= args.max_chars:
            break
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n\n".join(out) + "\n", encoding="utf-8")
    print(f"{len(out)} docstring paragraphs, {total / 1e6:.1f} MB from {stdlib} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
