"""A site's own site-level ledger: the site-level DP rounds it has put its noised vector into.

One JSON file, ``<state_dir>/site-level-ledger.json``, rewritten atomically on each charge::

    {"format": "confide-site-level-ledger/1",
     "rounds": [{"run_id": "7", "round": 1, "record": {<SiteLevelDPRound fields>},
                 "epsilon_after": 2.1, "budget": 8.0, "delta": 1e-05}, ...]}

A round is charged *before* the site's vector leaves, at the price the site computed itself
from the parameters it was handed (the coordinator may still abort the round; a charge for
an unreleased round is conservative). Charging the same ``(run_id, round)`` again replaces
the earlier charge (a retried round is one release at most).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from privacy.ddg.accounting import SiteLevelDPRound
from protocol.io import atomic_write_json

__all__ = ["SITE_LEVEL_LEDGER", "SiteLevelLedger"]

logger = logging.getLogger(__name__)

SITE_LEVEL_LEDGER = "site-level-ledger.json"
_FORMAT = "confide-site-level-ledger/1"


class SiteLevelLedger:
    """The site-level rounds one site has been charged for, per run.

    Raises
    ------
    ValueError
        If the file exists but is not a site-level ledger (names the file).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / SITE_LEVEL_LEDGER
        self._rounds: list[dict[str, Any]] = []
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                if doc.get("format") != _FORMAT or not isinstance(doc.get("rounds"), list):
                    raise ValueError("not a site-level ledger")
                for row in doc["rounds"]:
                    SiteLevelDPRound.from_mapping(row["record"])  # validates
                self._rounds = list(doc["rounds"])
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                raise ValueError(f"site-level ledger {self.path}: {exc}") from None

    def history(self, run_id: str) -> list[SiteLevelDPRound]:
        """Return the charged rounds of ``run_id``, oldest first."""
        return [SiteLevelDPRound.from_mapping(r["record"]) for r in self._rounds
                if r["run_id"] == run_id]

    def charges(self) -> list[dict[str, Any]]:
        """Every charge, as stored."""
        return [dict(r) for r in self._rounds]

    def charge(self, *, run_id: str, round_num: int, record: SiteLevelDPRound,
               epsilon_after: float, budget: float, delta: float) -> None:
        """Record (atomically) that this round's vector is about to leave at this price."""
        row = {"run_id": str(run_id), "round": int(round_num), "record": record.to_mapping(),
               "epsilon_after": float(epsilon_after), "budget": float(budget),
               "delta": float(delta)}
        rounds = [r for r in self._rounds
                  if (r["run_id"], r["round"]) != (row["run_id"], row["round"])]
        rounds.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"format": _FORMAT, "rounds": rounds})
        self._rounds = rounds
        logger.info("site-level ledger: run %s round %d charged, site eps %.4g of %g",
                    run_id, round_num, epsilon_after, budget)
