"""Resolve ``model`` and ``data-dir``: the embedded default, a named model, a path or a hub id.

Part of the contract between the coordinator and the sites: the run config names one base
model, the coordinator builds the adapter manifest from it (:mod:`server.app`) and every
site must resolve the same name to the same checkpoint (:mod:`client.model`), ``embedded``
included, or their adapters do not match. So it lives in ``protocol``, the lowest layer both
import; it reads only the installed project's files (``client/embedded``,
``simulations/data/sites``) by path and imports no other Confide package.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import unquote

from protocol.named_model import NAMED_MODELS, NamedModelError, named_model_dir

__all__ = [
    "EMBEDDED",
    "NAMED_MODELS",
    "ModelError",
    "bundled_sites_dir",
    "embedded_model_dir",
    "resolve_data_dir",
    "resolve_model",
]

EMBEDDED = "embedded"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelError(ValueError):
    """The model reference cannot be resolved or loaded."""


def _project_roots() -> list[Path]:
    """Where the project's files may live: next to this code, the editable source, sys.path."""
    roots = [Path(__file__).resolve().parent.parent]
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        direct = distribution("confide").read_text("direct_url.json")
        if direct:
            url = json.loads(direct).get("url", "")
            if url.startswith("file://"):
                roots.append(Path(unquote(url[len("file://"):])))
    except (PackageNotFoundError, ValueError, OSError):
        pass
    roots += [Path(p) for p in sys.path if p]
    return roots


def embedded_model_dir() -> Path:
    """Find the checkpoint shipped with the project (``client/embedded``).

    Looked up in ``$CONFIDE_EMBEDDED_MODEL``, next to the ``client`` package, then under
    every ``sys.path`` entry (a Flower FAB carries only the code; the installed project
    carries the weights).
    """
    candidates: list[Path] = []
    env = os.environ.get("CONFIDE_EMBEDDED_MODEL")
    if env:
        candidates.append(Path(env))
    candidates += [root / "client" / "embedded" for root in _project_roots()]
    for cand in candidates:
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")):
            return cand.resolve()
    raise ModelError(
        "the embedded default model is not installed (looked in "
        f"{', '.join(str(c) for c in candidates[:3])}); rebuild it with "
        "`python -m simulations.generate.make_embedded --out client/embedded`"
    )


def resolve_model(spec: str) -> str:
    """Turn ``--model`` into a local directory or a hub id; refuse a missing path.

    ``embedded`` is the bundled checkpoint; a name in :data:`NAMED_MODELS` (``smollm2-135m``)
    is its converted, hash-checked checkpoint in the cache, built on first use (write
    ``./smollm2-135m`` for a local directory of that name). An existing directory must hold
    ``config.json``.
    Anything that looks like a filesystem path but does not exist is an error; ``name`` or
    ``org/name`` that is not a local directory is taken as a hub id.
    """
    if spec == EMBEDDED:
        return str(embedded_model_dir())
    if spec in NAMED_MODELS:
        try:
            return str(named_model_dir(spec))
        except NamedModelError as exc:
            raise ModelError(str(exc)) from None
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"`model` directory {str(path)!r} has no config.json")
        return str(path.resolve())
    if path.exists():
        raise ModelError(f"`model` must be a checkpoint directory or a hub id, got file {spec!r}")
    looks_like_path = spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path or not _HUB_ID.match(spec):
        raise ModelError(f"`model` path does not exist: {spec!r}")
    return spec


def bundled_sites_dir() -> Path:
    """Find the demo site data shipped with the project (``simulations/data/sites``)."""
    candidates = [root / "simulations" / "data" / "sites" for root in _project_roots()]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    raise ModelError("the bundled demo data (simulations/data/sites) is not installed")


def resolve_data_dir(spec: str) -> str:
    """``embedded`` -> the bundled demo sites; anything else must be an existing directory."""
    if spec == EMBEDDED:
        return str(bundled_sites_dir())
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelError(f"`data-dir` is not a directory: {spec!r}")
    return str(path.resolve())
