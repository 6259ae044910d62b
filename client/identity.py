"""The site's long-term Ed25519 identity key, kept in its state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privacy.secagg import SecAggError, load_identity_private_key

__all__ = ["IDENTITY_FILE", "load_site_identity"]

IDENTITY_FILE = "identity.key"


def load_site_identity(state_dir: Path) -> Any:
    """Load the site's Ed25519 identity key from ``state_dir/identity.key`` (32 raw bytes)."""
    path = state_dir / IDENTITY_FILE
    try:
        return load_identity_private_key(path.read_bytes())
    except OSError as exc:
        raise SecAggError(f"cannot read the site identity key {path}: {exc.strerror}") from None
