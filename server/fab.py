"""The Flower app directory a run submits (``flwr run APP``): Confide's code and its config.

Used by the coordinator (:mod:`server.deploy`) and the simulation runner
(:mod:`simulations.runner`): both submit the same ServerApp / ClientApp.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocol.procs import toml_value

__all__ = ["stage_app"]

#: the packages the ServerApp and the ClientApp import (the FAB carries their sources)
_PACKAGES = ("server", "client", "protocol", "privacy")


def stage_app(dest: Path, defaults: Mapping[str, Any]) -> Path:
    """Write a Flower app directory: the code packages plus a generated pyproject.toml.

    Only Python sources travel in the FAB; weights and data are read from the installed
    project by absolute path in the run config.
    """
    root = Path(__file__).resolve().parent.parent
    for pkg in _PACKAGES:
        src = root / pkg
        for py in src.rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            target = dest / pkg / py.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(py, target)
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", 'name = "confide"', 'version = "0.1.0"',
        'description = "Confide federated LoRA fine-tuning"', 'license = "Apache-2.0"',
        "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "confide"', "",
        "[tool.flwr.app.components]", 'serverapp = "server.app:app"',
        'clientapp = "client.app:app"', "", "[tool.flwr.app.config]",
    ]
    lines += [f"{k} = {toml_value(v)}" for k, v in sorted(defaults.items())]
    (dest / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest
