"""Canaries planted at one site for the empirical privacy audit (``confide simulate --canaries``).

After Steinke, Nasr & Jagielski (NeurIPS 2023), see :mod:`privacy.audit.canary`: ``canaries``
random token sequences are drawn from ``canary-seed``, each with a fair coin; the site named
``canary-site`` adds the canaries whose coin came up to its *training* split and then trains
exactly as usual (its DP policy, its sampling rate over the enlarged set, its ledger). The
auditor redraws the same plan from the seed and scores every canary on the released adapter.
No other site and no held-out split is touched.
"""

from __future__ import annotations

import logging
from typing import Any

from client.data import TokenizedExample
from privacy.audit.canary import CanaryPlan
from protocol.config import RunConfig

__all__ = ["canary_plan", "planted_canaries"]

logger = logging.getLogger(__name__)


def canary_plan(cfg: RunConfig, tokenizer: Any) -> CanaryPlan:
    """Draw the run's canaries and coins (the same at the site and for the auditor)."""
    special = sorted({int(i) for i in (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                        tokenizer.pad_token_id) if i is not None})
    return CanaryPlan.draw(cfg.canaries, length=cfg.canary_length, vocab_size=len(tokenizer),
                           seed=cfg.canary_seed, exclude=special)


def planted_canaries(cfg: RunConfig, site: str, tokenizer: Any) -> list[TokenizedExample]:
    """Return the canaries ``site`` trains on: those with an IN coin if it is the canary site."""
    if cfg.canaries <= 0 or site != cfg.canary_site:
        return []
    plan = canary_plan(cfg, tokenizer)
    planted = [TokenizedExample(plan.sequences[i], plan.sequences[i])
               for i in plan.indices(included=True)]
    logger.warning("site %s: %d of %d audit canaries planted in its training data (seed %d)",
                   site, len(planted), plan.m, cfg.canary_seed)
    return planted
