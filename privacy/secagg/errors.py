"""Error types of the secure-aggregation protocol."""

from __future__ import annotations

__all__ = ["SecAggAbort", "SecAggError", "StageError"]


class SecAggError(Exception):
    """Opaque failure of anything cryptographic or protocol-related in secure aggregation.

    The message says which check failed (a field, a node id, a stage), never a key, a
    share or raw bytes. Cryptographic failures (bad signature, bad ciphertext, bad share)
    deliberately carry no detail beyond *which* object failed.
    """


class StageError(SecAggError):
    """A message arrived for a stage that may not follow the current one."""


class SecAggAbort(RuntimeError):
    """The round cannot complete: fewer than the threshold of sites (or shares) remain.

    The global model must stay unchanged; the next round may proceed.

    Parameters
    ----------
    stage : str
        The stage at which the round was aborted.
    reason : str
        A human-readable reason (node ids and counts, never secrets).
    """

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"secure aggregation aborted at stage {stage!r}: {reason}")
        self.stage = stage
        self.reason = reason
