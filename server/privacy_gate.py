"""The ServerApp's refusal to start a run with the privacy stack off unless told so.

``confide simulate`` and ``confide server`` state DP and secure aggregation on or off
explicitly; Flower's own ``flwr run .`` takes the ``[tool.flwr.app.config]`` defaults, where
both are off. Such a run stops before any site is asked anything, with a message that says
what is off and how to turn it on, unless ``allow-no-privacy = true`` says it is meant.
"""

from __future__ import annotations

import logging

from protocol.config import RunConfig

__all__ = ["PrivacyOffError", "refuse_without_privacy"]

logger = logging.getLogger(__name__)


class PrivacyOffError(RuntimeError):
    """The run's configuration has DP or secure aggregation off and does not allow it."""


def refuse_without_privacy(cfg: RunConfig) -> None:
    """Raise :class:`PrivacyOffError` naming what is off, unless ``allow-no-privacy``."""
    missing = []
    if not cfg.dp:
        missing.append("dp = false: the sites train without DP-SGD and no epsilon is claimed "
                       "(turn on: dp = true and each site's policy, dp-policy in simulation)")
    if not cfg.secagg:
        missing.append("secagg = false: the coordinator sees every site's update in the clear "
                       "(turn on: secagg = true and secagg-enrolment, the sites' identity keys)")
    if not missing or cfg.allow_no_privacy:
        return
    message = ("refusing to start: the privacy stack is off in this run's configuration: "
               + "; ".join(missing) + ". `confide simulate --sites 3 --rounds 3 --out RUN_DIR` "
               "runs the same app with both on (it sets each virtual site's policy and enrols "
               "their keys); to run without them on purpose, pass "
               "--run-config \"allow-no-privacy=true\"")
    logger.error("%s", message)
    raise PrivacyOffError(message)
