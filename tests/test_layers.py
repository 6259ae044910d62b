"""Dependencies point one way: simulations -> server | client -> privacy -> protocol.

The contracts live in pyproject.toml (``[tool.importlinter]``); these tests run import-linter
on the tree, and once more on a copy with a deliberate violation to show the contracts bite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "client", "protocol", "privacy", "simulations")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(),
                                reason="import-linter is not installed (pip install -e .[test])")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def _copy_tree(dst: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "data", "embedded"))


def test_the_tree_keeps_every_layer_and_cycle_contract() -> None:
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "broken" not in res.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(("module", "bad_import", "what"), [
    ("protocol/config.py", "import privacy.policy", "protocol is not allowed to import privacy"),
    ("privacy/policy.py", "import client.data", "privacy is not allowed to import client"),
    ("server/aggregate.py", "import client.data", "server is not allowed to import client"),
    ("client/data.py", "import server.aggregate", "client is not allowed to import server"),
    ("client/data.py", "import simulations.runner", "client is not allowed to import simulations"),
])
def test_a_deliberate_violation_breaks_the_contracts(tmp_path: Path, module: str,
                                                     bad_import: str, what: str) -> None:
    _copy_tree(tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{bad_import}  # deliberate violation\n")
    res = _lint(tmp_path)
    assert res.returncode != 0, res.stdout[-3000:]
    assert what in res.stdout, res.stdout[-3000:]


def test_an_import_cycle_inside_a_package_breaks_the_contracts(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    # protocol.io is imported by protocol.config's siblings; make it import one back
    target = tmp_path / "protocol" / "io.py"
    target.write_text(target.read_text() + "\nimport protocol.config  # deliberate cycle\n")
    config = tmp_path / "protocol" / "config.py"
    config.write_text(config.read_text() + "\nimport protocol.io  # deliberate cycle\n")
    res = _lint(tmp_path)
    assert res.returncode != 0, res.stdout[-3000:]
    assert "No cycles are allowed in protocol" in res.stdout, res.stdout[-3000:]
