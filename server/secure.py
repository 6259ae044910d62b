"""One round of secure aggregation driven over Flower messages.

Stages (each one message per site, each with the round timeout):

1. ``query.secagg_advertise``: the round's config; sites return signed X25519 keys.
2. ``query.secagg_share``: neighbours' signed adverts; sites return encrypted Shamir shares.
3. ``train.secagg``: the global adapter, the round's instructions, the codec parameters and
   the shares routed to the site; the site trains (DP at the site first), encodes its delta
   (clip, weight, stochastic rounding mod 2^k) and returns it masked.
4. ``query.secagg_unmask``: survivors / dropped lists; sites return the shares needed.

The server only ever holds masked vectors and their sum; it decodes the sum of the
contributors, divides by their total weight and applies it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MessageType, RecordDict

from privacy.secagg import SecAggAbort, SecAggConfig, ServerSession
from protocol.codec import Manifest, choose_modulus_bits, decode, decoding_error_bound
from protocol.enrolment import load_enrolment
from protocol.messages import ARRAYS, CONFIG, STATUS_OK, get_payload, put_payload, state_to_record
from server.aggregate import apply_delta

__all__ = ["SCALE_BITS", "SecureAggregator", "load_enrolment"]

logger = logging.getLogger(__name__)

#: One site's clipped, weighted delta spans 2^SCALE_BITS grid steps per coordinate.
SCALE_BITS = 40
COHORT_NAMES = "cohort-names"
ADVERTISE = "query.secagg_advertise"
SHARE = "query.secagg_share"
MASKED = "train.secagg"
UNMASK = "query.secagg_unmask"


def codec_scale(clip: float, max_weight: float) -> float:
    """Grid step: a site's clipped, weighted coordinate spans 2^SCALE_BITS steps."""
    return clip * max_weight / float(1 << SCALE_BITS)


class SecureAggregator:
    """Runs the four stages for one round; the driver supplies messaging and names."""

    def __init__(self, driver: Any, *, enrolment: Mapping[str, bytes], clip: float,
                 max_weight: float, site_dp: Any = None) -> None:
        self.driver = driver
        self.site_dp = site_dp  # a server.site_dp.SiteDP when site-level DP is on
        self.enrolment = dict(enrolment)
        self.clip = clip
        self.max_weight = max_weight
        self.scale = codec_scale(clip, max_weight)

    def _stage(self, kind: str, requests: Mapping[int, Mapping[str, Any]], round_num: int,
               extra: RecordDict | None = None, names: Mapping[int, str] | None = None,
               ) -> dict[int, Any]:
        contents = {}
        for node, payload in requests.items():
            content = RecordDict(dict(extra.items()) if extra is not None else {})
            if names is not None:
                content[COHORT_NAMES] = ConfigRecord({"names": json.dumps(
                    {str(n): s for n, s in names.items()})})
            contents[node] = put_payload(content, payload)
        return {r.node_id: r for r in self.driver.send_each(contents, kind, round_num)}

    def round(self, round_num: int, state: Mapping[str, np.ndarray], nodes: list[int],
              instructions: ConfigRecord) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
        d = self.driver
        part: dict[str, Any] = {"round": round_num, "sampled": [], "contributed": [],
                                "dropped": [], "declined": {}, "failed": {}, "epsilon": {},
                                "secure_aggregation": True}
        names = {n: d.site_names.get(n, f"node-{n}") for n in nodes}
        part["sampled"] = sorted(names.values())
        cohort = [n for n in nodes if names[n] in self.enrolment]
        for n in nodes:
            if n not in cohort:
                part["failed"][names[n]] = "not enrolled (no identity key in the enrolment list)"
        manifest = Manifest.from_arrays({k: np.zeros(d.shapes[k], np.float32)
                                         for k in d.upload_keys})
        plan = None
        if self.site_dp is not None:
            plan = self.site_dp.plan(cohort_size=len(cohort), dim=manifest.dim)
            if isinstance(plan, str):
                part["site_dp"] = {"mode": self.site_dp.mode, "released": False,
                                   "refused": plan,
                                   "budget_exhausted": self.site_dp.exhausted}
                return self._abort(part, plan)
        try:
            bits = plan.modulus_bits if plan is not None else choose_modulus_bits(
                n_sites=max(len(cohort), 1), clip_norm=self.clip, max_weight=self.max_weight,
                scale=self.scale, dim=manifest.dim)
            config = SecAggConfig.create(
                run_id=int(d.run_id, 16), round=round_num, cohort=cohort, modulus_bits=bits,
                vector_length=plan.padded if plan is not None else manifest.dim,
                graph_seed=os.urandom(32))
            server = ServerSession(config=config,
                                   registry={n: self.enrolment[names[n]] for n in cohort})
        except (ValueError, SecAggAbort) as exc:
            return self._abort(part, f"cannot set up secure aggregation: {exc}")
        part["threshold"] = config.threshold
        part["degree"] = config.degree
        part["modulus_bits"] = bits
        weights: dict[int, float] = {}
        try:
            replies = self._stage(ADVERTISE, server.advertise_requests(), round_num,
                                  names={n: names[n] for n in cohort})
            for n, r in replies.items():
                if r.status == STATUS_OK and r.payload is not None:
                    server.receive_advertisement(n, r.payload)
            replies = self._stage(SHARE, server.share_keys_requests(), round_num)
            for n, r in replies.items():
                if r.status == STATUS_OK and r.payload is not None:
                    server.receive_shares(n, r.payload)
            codec = {"secagg-clip": self.clip, "secagg-scale": self.scale,
                     "secagg-max-weight": self.max_weight, "manifest": manifest.digest()}
            if plan is not None:
                codec.update({**plan.to_config(), "site-dp-mode": self.site_dp.mode})
            train_extra = RecordDict({ARRAYS: state_to_record(state), CONFIG: ConfigRecord(
                {**dict(instructions.items()), **codec})})
            replies = self._stage(MASKED, server.masked_input_requests(), round_num, train_extra)
            for n, r in replies.items():
                if "epsilon" in r.metrics:
                    part["epsilon"][r.site] = float(r.metrics["epsilon"])
                if r.status == "declined":
                    part["declined"][r.site] = r.reason
                    if r.reason == "budget-exhausted":
                        d.exhausted.add(n)
                    continue
                if r.status != STATUS_OK or r.payload is None:
                    part["failed"][r.site] = r.reason or r.status
                    continue
                w = r.metrics.get("num-examples")
                if type(w) is not int or not 0 < w <= self.max_weight:
                    part["failed"][r.site] = f"rejected: weight {w!r} outside (0, {self.max_weight:g}]"
                    continue
                if server.receive_masked_input(n, r.payload):
                    weights[n] = float(w)
            admission = None
            if plan is not None:  # decide before anything is unmasked
                admission = self.site_dp.admit(plan, len(weights))
                if not admission.ok:
                    part["site_dp"] = {**admission.record, "refused": admission.reason}
                    return self._abort(part, admission.reason)
            replies = self._stage(UNMASK, server.unmask_requests(), round_num)
            for n, r in replies.items():
                if r.status == STATUS_OK and r.payload is not None:
                    server.receive_unmask(n, r.payload)
            result = server.finish()
        except SecAggAbort as exc:
            for node, stage, reason in server.rejections:
                part["failed"].setdefault(names.get(node, str(node)), f"{stage}: {reason}")
            return self._abort(part, str(exc))
        for node, stage, reason in result.rejections:
            part["failed"].setdefault(names.get(node, str(node)), f"{stage}: {reason}")
        if plan is not None and admission is not None:
            return self._release_site_dp(part, state, result, manifest, plan, admission, names)
        total = sum(weights[n] for n in result.contributors)
        summed = decode(result.vector, manifest, scale=self.scale, modulus_bits=bits)
        mean = {k: (v / total).astype(np.float32) for k, v in summed.items()}
        bound = decoding_error_bound(n_sites=len(result.contributors), clip_norm=self.clip,
                                     max_weight=self.max_weight, scale=self.scale,
                                     dim=manifest.dim)
        part["contributed"] = sorted(names[n] for n in result.contributors)
        part["dropped"] = sorted(names[n] for n in result.dropped if names[n] not in part["declined"])
        part["released"] = True
        part["decoding_error_bound"] = {"per_coordinate": bound.per_coordinate / total,
                                        "l2": bound.l2 / total}
        logger.info("round %d: secure aggregate of %d sites (t=%d, k=%d bits), %d dropped; "
                    "decoding error <= %.3g per coordinate of the mean", round_num,
                    len(result.contributors), config.threshold, bits, len(part["dropped"]),
                    bound.per_coordinate / total)
        return apply_delta(state, mean), part

    def _release_site_dp(self, part: dict[str, Any], state: Mapping[str, np.ndarray],
                         result: Any, manifest: Manifest, plan: Any, admission: Any,
                         names: Mapping[int, str],
                         ) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
        """Site-level DP: the unweighted mean of the (noised) sum, accounted."""
        from privacy.ddg import WrapError

        n = len(result.contributors)
        if n != admission.record["contributors"]:  # never release a sum other than admitted
            return self._abort(part, f"site-level DP: {n} contributors in the sum, "
                                     f"{admission.record['contributors']} admitted")
        try:
            mean = self.site_dp.decode_mean(result.vector, manifest, plan, n)
        except WrapError as exc:
            part["site_dp"] = {**admission.record, "refused": str(exc)}
            return self._abort(part, str(exc))
        part["site_dp"] = self.site_dp.release(admission)
        part["contributed"] = sorted(names[c] for c in result.contributors)
        part["dropped"] = sorted(names[c] for c in result.dropped
                                 if names[c] not in part["declined"])
        part["released"] = True
        logger.info("round %d: site-level DP aggregate of %d sites, %d dropped; site eps %.4f",
                    part["round"], n, len(part["dropped"]), part["site_dp"]["epsilon_after"])
        return apply_delta(state, mean), part

    def _abort(self, part: dict[str, Any], reason: str) -> tuple[None, dict[str, Any]]:
        part["released"] = False
        part["abort_reason"] = reason
        logger.warning("round %d: secure aggregation aborted: %s; global adapter unchanged",
                       part["round"], reason)
        return None, part
