"""Where a site's DP-SGD noise and Poisson coins come from: the OS CSPRNG, or a site secret.

The noise protects a site's records only against someone who cannot predict it. Two
sources exist, and each trained round's ledger entry says which one it used:

* ``csprng`` (the default at every deployed site): Poisson coins and Gaussian noise from
  ``os.urandom`` (:func:`privacy.dp_sgd.secure_gaussian`). Nothing can regenerate them.
* ``seeded``: a ``torch.Generator`` seeded from the site's **secret seed**, 32 random bytes
  created once in the site's state directory (:data:`SECRET_SEED_FILE`, mode 0600) and
  never sent anywhere, keyed per run and round with HMAC-SHA256. Simulations use it for
  reproducible runs; a deployed site gets it only when its own policy turns the CSPRNG off
  (``dp-secure-mode = false`` in its node config). The audit flags every such round: the
  seed is as secret as the state directory, and torch's Mersenne Twister is not a CSPRNG.

Nothing the coordinator sends or knows (the run's ``seed``, the round, the site's name)
goes into either source.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

__all__ = [
    "CSPRNG",
    "NOISE_SOURCES",
    "SECRET_SEED_FILE",
    "SEEDED",
    "round_seed",
    "site_secret_seed",
]

logger = logging.getLogger(__name__)

CSPRNG = "csprng"
SEEDED = "seeded"
NOISE_SOURCES: tuple[str, ...] = (CSPRNG, SEEDED)
#: The site's secret noise seed, in its state directory (created once, 0600, never sent).
SECRET_SEED_FILE = "noise-seed.key"
_SEED_BYTES = 32


def site_secret_seed(state_dir: str | os.PathLike[str]) -> bytes:
    """Return the site's 32-byte secret noise seed, created with ``os.urandom`` on first use.

    Created exclusively (``O_EXCL``) with mode 0600, so two processes of one site agree on
    it and no other user can read it. A file of the wrong length is refused, not replaced:
    replacing it would silently change every later seeded round.

    Raises
    ------
    ValueError
        If the file exists but does not hold exactly 32 bytes.
    """
    path = Path(state_dir) / SECRET_SEED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, os.urandom(_SEED_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        logger.info("created the site's secret noise seed %s (mode 0600)", path)
    secret = path.read_bytes()
    if len(secret) != _SEED_BYTES:
        raise ValueError(f"secret noise seed {path} must hold {_SEED_BYTES} bytes, got "
                         f"{len(secret)}; restore it from the site's backup")
    return secret


def round_seed(secret: bytes, *, run_id: str, round_num: int) -> int:
    """Return a 63-bit generator seed for a run and round: HMAC-SHA256 keyed by the site secret."""
    if len(secret) != _SEED_BYTES:
        raise ValueError(f"the secret seed must be {_SEED_BYTES} bytes, got {len(secret)}")
    if type(round_num) is not int or round_num < 0:
        raise ValueError(f"`round_num` must be an int >= 0, got {round_num!r}")
    mac = hmac.new(secret, f"confide-dp-sgd|{run_id}|{round_num}".encode(), hashlib.sha256)
    return int.from_bytes(mac.digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
