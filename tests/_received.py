"""Reading ``received.jsonl`` for tests: which per-site figures a reply held in the clear."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from protocol.wire import Field, Key, Metric

__all__ = ["PER_SITE", "clear_per_site"]

#: per-site figures that must never travel in the clear by default
PER_SITE = frozenset({Metric.NUM_EXAMPLES, Metric.NUM_TOKENS, Metric.TRAIN_LOSS,
                      Metric.EVAL_LOSS, Metric.STEPS, Metric.TIME_SETUP, Metric.TIME_TRAIN,
                      Metric.TIME_EVAL})


def _payload_keys(values: Mapping[str, Any]) -> set[str]:
    raw = values.get(Field.PAYLOAD)
    if not isinstance(raw, str):
        return set()
    doc = json.loads(raw)
    return {str(k) for k in doc} if isinstance(doc, dict) else set()


def clear_per_site(row: Mapping[str, Any]) -> list[str]:
    """Every per-site loss, count or timing one ``received.jsonl`` line holds in the clear.

    A metric record may hold only the privacy parameters the signed ledger summary reveals
    anyway (``Metric.LEDGER``); no record, nor the secure-aggregation payload, may hold a key
    of :data:`PER_SITE`.
    """
    found = []
    for name, rec in (row.get("records") or {}).items():
        values = rec.get("values") or {}
        keys = set(values) | set(rec.get("arrays") or {}) | _payload_keys(values)
        for key in sorted(keys):
            if key in PER_SITE or (name == Key.METRICS and key not in Metric.LEDGER):
                found.append(f"{name}.{key}")
    return found
