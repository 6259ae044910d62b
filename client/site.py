"""Who this site is and what data it holds, from Flower's node config and the run config."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.data import (
    DataError,
    TokenizedExample,
    load_examples,
    shard_for_partition,
    split_examples,
    take_shard,
    tokenize_examples,
)
from protocol.config import RunConfig
from protocol.model_ref import resolve_data_dir

__all__ = ["SiteData", "SiteSpec", "load_site_data", "site_spec"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteSpec:
    """A site's identity and local settings (never set by the server)."""

    name: str
    data_path: Path
    shard: int = 0
    num_shards: int = 1
    state_dir: Path | None = None
    device: str = "auto"


@dataclass(frozen=True)
class SiteData:
    """A site's tokenised train and held-out splits."""

    spec: SiteSpec
    train: list[TokenizedExample]
    held_out: list[TokenizedExample]
    fingerprint: str


def site_spec(node_config: Mapping[str, Any], cfg: RunConfig) -> SiteSpec:
    """Read the site's identity and local settings.

    Deployment: ``data-path`` etc. in the node config. Simulation: a partition of ``data-dir``.
    """
    if "data-path" in node_config:
        data_path = Path(str(node_config["data-path"])).expanduser()
        state = node_config.get("state-dir")
        return SiteSpec(
            name=str(node_config.get("site-name", data_path.stem)),
            data_path=data_path,
            state_dir=Path(str(state)).expanduser() if state else None,
            device=str(node_config.get("device", cfg.device)),
        )
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise DataError(
            "node config has neither `data-path` (deployment) nor `partition-id` and "
            f"`num-partitions` (simulation): {sorted(node_config)}"
        )
    pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
    path, shard, shards = shard_for_partition(resolve_data_dir(cfg.data_dir), pid, n)
    name = path.stem if shards == 1 else f"{path.stem}-{shard}"
    state_root = cfg.sites_state_dir
    state_dir = Path(str(state_root)) / name if state_root else None
    return SiteSpec(name=name, data_path=path, shard=shard, num_shards=shards,
                    state_dir=state_dir, device=cfg.device)


_CACHE: dict[tuple[Any, ...], SiteData] = {}


def load_site_data(spec: SiteSpec, cfg: RunConfig, tokenizer: Any) -> SiteData:
    """Read, split (fixed seed) and tokenise the site's data once per process."""
    key = (spec, cfg.max_seq_len, cfg.eval_fraction, cfg.split_seed, cfg.max_eval_examples,
           getattr(tokenizer, "name_or_path", None), cfg.canaries, cfg.canary_site,
           cfg.canary_length, cfg.canary_seed)
    if key in _CACHE:
        return _CACHE[key]
    examples = load_examples(spec.data_path)
    if spec.num_shards > 1:
        examples = take_shard(examples, spec.shard, spec.num_shards)
    train, held = split_examples(examples, eval_fraction=cfg.eval_fraction, seed=cfg.split_seed)
    if cfg.max_eval_examples:
        held = held[: cfg.max_eval_examples]
    train_t = tokenize_examples(train, tokenizer, max_seq_len=cfg.max_seq_len)
    held_t = tokenize_examples(held, tokenizer, max_seq_len=cfg.max_seq_len)
    if not train_t or not held_t:
        raise DataError(f"site {spec.name}: no usable examples after tokenisation")
    if cfg.canaries:
        from client.canaries import planted_canaries

        train_t = train_t + planted_canaries(cfg, spec.name, tokenizer)
    digest = hashlib.sha256()
    for ex in train_t:
        digest.update(bytes(str(ex.input_ids), "ascii"))
    data = SiteData(spec, train_t, held_t, digest.hexdigest()[:16])
    logger.info("site %s: %d train / %d held-out examples from %s", spec.name, len(train_t),
                len(held_t), spec.data_path)
    _CACHE[key] = data
    return data
