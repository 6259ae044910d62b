"""The site's privacy side: its own policy, its ledger, and the train-or-decline decision.

The policy comes from the site (its node config in deployment; in simulation the
``confide simulate`` command stands in for every site operator and passes one policy for
all virtual sites as ``dp-policy``, which the ServerApp never reads). The server only
asks: DP on or off, optionally a σ. The ledger lives in the site's state directory and is
written before the update leaves the site.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.identity import IDENTITY_FILE, load_site_identity
from privacy.accounting import Mechanism, epsilon
from privacy.budget import Decline, RoundPlan, calibrate_plan, plan_round, sample_rate_for
from privacy.ledger import PrivacyLedger
from privacy.policy import PolicyError, SitePrivacyPolicy
from protocol.io import atomic_write_json

__all__ = ["SitePrivacy", "policy_from_config", "projected_summary"]

logger = logging.getLogger(__name__)

POLICY_KEY = "dp-policy"


def policy_from_config(node_config: Mapping[str, Any], simulated: str) -> SitePrivacyPolicy | None:
    """Read the site's policy: ``dp-*`` keys of the node config, else the simulation's stand-in.

    ``None`` means the site trains without DP (and declines nothing for DP reasons).
    """
    node_keys = {k[len("dp-"):]: v for k, v in node_config.items() if str(k).startswith("dp-")}
    if node_keys:
        return SitePrivacyPolicy.from_mapping(node_keys)
    if not simulated or "data-path" in node_config:
        # a deployed site (its own data-path) never takes a policy from the run config: the
        # coordinator chooses that, and could hand every site without [privacy] a weak one
        return None
    try:
        doc = json.loads(simulated)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"`{POLICY_KEY}` is not valid JSON: {exc.msg}") from None
    return SitePrivacyPolicy.from_mapping(doc)


@dataclass
class SitePrivacy:
    """One site's policy and ledger, with the σ calibrated once per run cached."""

    policy: SitePrivacyPolicy
    ledger: PrivacyLedger
    site: str
    num_examples: int
    _calibrated: dict[str, float]

    @classmethod
    def open(cls, policy: SitePrivacyPolicy, state_dir: Path, *, site: str,
             num_examples: int) -> SitePrivacy:
        """Open the site's ledger in ``state_dir`` and record its policy there (``policy.json``)."""
        ledger = PrivacyLedger(state_dir)  # verifies the hash chain; refuses a broken one
        me = cls(policy, ledger, site, num_examples, {})
        atomic_write_json(state_dir / "policy.json", {
            **policy.to_mapping(), "site": site, "num_examples": num_examples,
            "delta": policy.resolve_delta(num_examples),
        })
        return me

    @property
    def delta(self) -> float:
        """δ of the site's policy for its number of examples."""
        return self.policy.resolve_delta(self.num_examples)

    def spent(self) -> float:
        """Return the ε the ledger has spent so far, at the policy's δ."""
        return epsilon(self.ledger.history(), delta=self.delta, accountant=self.policy.accountant)

    def plan(self, *, run_id: str, batch_size: int, local_steps: int, planned_rounds: int,
             dp_enabled: bool, requested_noise_multiplier: float | None) -> RoundPlan | Decline:
        """Train under which σ, or decline (``budget-exhausted`` / ``dp-weaker-than-policy``)."""
        sigma = None
        if self.policy.calibrates and dp_enabled:
            if run_id not in self._calibrated:
                try:
                    self._calibrated[run_id] = calibrate_plan(
                        self.policy, prior_history=self.ledger.history(exclude_run=run_id),
                        num_examples=self.num_examples, batch_size=batch_size,
                        local_steps=local_steps, planned_rounds=planned_rounds)
                except Exception as exc:  # noqa: BLE001 - no room left: plan_round declines
                    logger.warning("site %s: calibration failed: %s", self.site, exc)
            sigma = self._calibrated.get(run_id)
        return plan_round(
            self.policy, history=self.ledger.history(), num_examples=self.num_examples,
            batch_size=batch_size, local_steps=local_steps,
            requested_noise_multiplier=requested_noise_multiplier, dp_enabled=dp_enabled,
            planned_rounds=planned_rounds, prior_history=self.ledger.history(exclude_run=run_id),
            calibrated_noise_multiplier=sigma,
        )

    def record(self, plan: RoundPlan, *, run_id: str, round_num: int,
               noise_source: str | None = None) -> None:
        """Append the trained round to the ledger (before the update leaves the site)."""
        self.ledger.record_round(
            run_id=run_id, round=round_num, steps=plan.steps, sample_rate=plan.sample_rate,
            noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
            accountant=plan.accountant, delta=plan.delta, epsilon_after=plan.epsilon_after,
            noise_source=noise_source)

    def record_decline(self, decline: Decline, *, run_id: str, round_num: int) -> None:
        """Append the declined round to the ledger."""
        self.ledger.record_decline(run_id=run_id, round=round_num, reason=decline.reason,
                                   accountant=decline.accountant, delta=decline.delta,
                                   epsilon_after=decline.epsilon_spent)

    def signed_summary(self, state_dir: Path, *, run_id: str,
                       round_num: int) -> tuple[str, str] | None:
        """Sign the ledger as it stands: ``(summary JSON, hex signature)``; None without a key.

        The signing key is the site's identity key (``identity.key`` in ``state_dir``). The
        summary covers the site-level ledger in ``state_dir`` too (this run's charges).
        """
        from privacy.ddg.site_ledger import SiteLevelLedger
        from privacy.ledger_summary import dumps, make_summary, sign_summary

        if not (state_dir / IDENTITY_FILE).is_file():
            logger.info("site %s: no identity key in %s; ledger summary not signed",
                        self.site, state_dir)
            return None
        key = load_site_identity(state_dir)
        summary = make_summary(
            self.ledger.entries, site=self.site, run_id=run_id, round_num=round_num,
            policy={**self.policy.to_mapping(), "site": self.site,
                    "num_examples": self.num_examples, "delta": self.delta},
            site_level_charges=SiteLevelLedger(state_dir).charges())
        return dumps(summary), sign_summary(summary, key)


def projected_summary(
    policy: SitePrivacyPolicy, *, site: str, num_examples: int, batch_size: int,
    local_steps: int, planned_rounds: int, history: list[Mechanism] | None = None,
) -> dict[str, Any]:
    """Project what the site will do over the plan: σ, q, δ, steps and the projected ε."""
    past = list(history or [])
    q = sample_rate_for(batch_size=batch_size, num_examples=num_examples)
    delta = policy.resolve_delta(num_examples)
    if policy.calibrates:
        sigma = calibrate_plan(policy, prior_history=past, num_examples=num_examples,
                               batch_size=batch_size, local_steps=local_steps,
                               planned_rounds=planned_rounds)
    else:
        sigma = float(policy.noise_multiplier or 0.0)
    steps = planned_rounds * local_steps
    eps = epsilon([*past, Mechanism(q, sigma, steps)], delta=delta, accountant=policy.accountant)
    return {"site": site, "budget": policy.budget_epsilon, "delta": delta, "sigma": sigma,
            "q": q, "C": policy.max_grad_norm, "steps": steps, "projected_epsilon": eps,
            "accountant": policy.accountant, "n": num_examples}
