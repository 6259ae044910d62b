"""The enrolment list: which sites take part, and each site's identity public key."""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["SITE_NAME", "load_enrolment"]

#: A site's name: a key of the enrolment list, a directory name, a SuperNode name.
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def load_enrolment(path: str) -> dict[str, bytes]:
    """``{site name: raw Ed25519 identity public key}`` from an enrolment JSON file."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read enrolment list {path!r}: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"enrolment list {path!r} must map site names to public keys")
    out: dict[str, bytes] = {}
    for name, hexkey in doc.items():
        try:
            raw = bytes.fromhex(str(hexkey))
        except ValueError:
            raise ValueError(f"enrolment list {path!r}: key of {name!r} is not hex") from None
        if len(raw) != 32:
            raise ValueError(f"enrolment list {path!r}: key of {name!r} is not 32 bytes")
        out[str(name)] = raw
    return out
