"""``confide simulate --site-level-dp``: the flags of site-level DP and their run-config keys."""

from __future__ import annotations

import argparse
from typing import Any

from simulations.flags import number as _number

__all__ = ["add_site_level_dp_args", "site_level_dp_overrides", "site_level_dp_summary"]


def add_site_level_dp_args(parser: argparse.ArgumentParser) -> None:
    """Add the site-level DP group to the ``simulate`` parser."""
    g = parser.add_argument_group(
        "site-level DP of the aggregate (distributed discrete Gaussian inside secure "
        "aggregation; protects a whole site)")
    g.add_argument("--site-level-dp", choices=("on", "off", "central"), default="off",
                   help="on: each site adds its share of discrete Gaussian noise inside "
                        "secure aggregation; central: a trusted server adds it (comparison); "
                        "default off")
    g.add_argument("--site-level-epsilon", type=_number("--site-level-epsilon", minimum=0, strict=True),
                   default=None, help="run-level site-level budget epsilon (default 8)")
    g.add_argument("--site-level-delta", type=_number("--site-level-delta", minimum=0, strict=True),
                   default=None, help="site-level delta (default 1e-5)")
    g.add_argument("--site-level-clip", type=_number("--site-level-clip", minimum=0, strict=True),
                   default=None, help="L2 bound on each site's delta (default 1.0)")
    g.add_argument("--site-level-noise-multiplier",
                   type=_number("--site-level-noise-multiplier", minimum=0, strict=False), default=None,
                   help="noise std of the sum / clip (default: calibrated to --site-level-epsilon)")
    g.add_argument("--site-level-cohort", type=int, default=None,
                   help="calibration cohort: sites whose noise makes up the target "
                        "(default 0: the round's cohort)")
    g.add_argument("--site-level-dp-bits", type=int, default=None,
                   help="ring Z/2^k of the noised encoding (default 32)")
    g.add_argument("--site-level-dp-underflow", choices=("refuse", "account"), default=None,
                   help="fewer contributors than the cohort: refuse the round (default) or "
                        "release it and account the smaller noise")


def site_level_dp_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Run-config keys for the site-level DP flags (RunConfig validates the values)."""
    mode = getattr(args, "site_level_dp", "off")
    if mode == "off":
        return {}
    out: dict[str, Any] = {"site-level-dp": True,
                           "site-level-dp-mode": "central" if mode == "central" else "distributed"}
    for flag, key in (("site_level_epsilon", "site-level-dp-epsilon"), ("site_level_delta", "site-level-dp-delta"),
                      ("site_level_clip", "site-level-dp-clip"),
                      ("site_level_noise_multiplier", "site-level-dp-noise-multiplier"),
                      ("site_level_cohort", "site-level-dp-cohort"), ("site_level_dp_bits", "site-level-dp-bits"),
                      ("site_level_dp_underflow", "site-level-dp-underflow")):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    return out


def site_level_dp_summary(cfg: Any) -> str:
    """One line for ``confide simulate``'s start-up screen."""
    if not cfg.site_level_dp:
        return "site-level DP of the aggregate: off (only example-level DP protects a site)"
    z = ("calibrated to the budget" if cfg.site_level_dp_noise_multiplier < 0
         else f"z={cfg.site_level_dp_noise_multiplier:g}")
    who = "each site adds its share inside secure aggregation" if \
        cfg.site_level_dp_mode == "distributed" else "a trusted server adds it to the sum"
    t = cfg.site_level_dp_cohort or "the round's cohort"
    return (f"site-level DP of the aggregate: {cfg.site_level_dp_mode} ({who}); budget "
            f"eps={cfg.site_level_dp_epsilon:g}, delta={cfg.site_level_dp_delta:g} over the run; clip "
            f"C={cfg.site_level_dp_clip:g}; noise {z}; calibration cohort {t}; fewer survivors: "
            f"{cfg.site_level_dp_underflow}; unweighted mean")
