"""Typed, validated run configuration shared by the ServerApp, the ClientApp and the CLI.

Flower hands both apps ``context.run_config``: a flat mapping with kebab-case keys
(``[tool.flwr.app.config]`` in pyproject.toml, overridden by ``--run-config``).
:class:`RunConfig` is its typed form. Unknown keys and wrong types are refused with an
error naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "AGGREGATION_MODES",
    "BASE_QUANTIZATIONS",
    "DEVICES",
    "PRECISIONS",
    "SITE_LEVEL_DP_MODES",
    "SITE_LEVEL_DP_UNDERFLOW",
    "ConfigError",
    "RunConfig",
]

AGGREGATION_MODES = ("fedavg", "frozen-a")
SITE_LEVEL_DP_MODES = ("distributed", "central")
SITE_LEVEL_DP_UNDERFLOW = ("refuse", "account")
#: where a site computes: ``auto`` is CUDA when present (client.compute.resolve_device)
DEVICES = ("auto", "cpu", "cuda")
#: ``auto``: bf16 autocast on a CUDA device with bfloat16, fp32 otherwise (client.compute)
PRECISIONS = ("auto", "fp32", "bf16")
#: the frozen base weights: as loaded, or bitsandbytes NF4 on CUDA (QLoRA)
BASE_QUANTIZATIONS = ("none", "4bit")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class RunConfig:
    """Everything the coordinator decides for a run (sites decide their own privacy policy)."""

    num_server_rounds: int = 3
    fraction_train: float = 1.0
    min_sites: int = 2
    local_steps: int = 2
    batch_size: int = 256
    max_seq_len: int = 128
    learning_rate: float = 3e-2
    aggregation: str = "frozen-a"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str = "auto"  # per architecture: protocol.adapter.default_target_modules
    lora_seed: int = 0
    model: str = "embedded"
    data_dir: str = "embedded"
    eval_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    device: str = "auto"
    #: a site's node config may set these three for itself (client.compute.site_compute)
    precision: str = "auto"
    gradient_checkpointing: bool = False
    base_quantization: str = "none"
    out_dir: str = "runs/flwr"
    round_timeout: float = 600.0
    #: seconds to wait for a site's ``query.hello`` (its name; no model is loaded). A node
    #: that stays silent, e.g. a killed SuperNode the SuperLink still lists, is not asked
    #: again in the same round
    hello_timeout: float = 30.0
    #: seconds between two pulls of the replies not yet received (Flower's own
    #: ``Grid.send_and_receive`` waits 3 s)
    poll_interval: float = 0.1
    #: each round's train message also evaluates the adapter it carries (the previous
    #: round's), so a round needs no evaluation messages of its own; the final adapter gets
    #: one. Under secure aggregation the figures ride in the training input's sum (not with
    #: site-level DP: then every round still has its own secure evaluation)
    eval_in_train: bool = True
    #: write RUN_DIR/received.jsonl, one line per reply received (protocol.run_folder)
    record_received: bool = False
    max_eval_examples: int = 0
    resume: bool = False
    dp: bool = False
    dp_noise_multiplier: float = -1.0
    dp_policy: str = ""
    sites_state_dir: str = ""
    secagg: bool = False
    secagg_enrolment: str = ""
    #: run with DP or secure aggregation off (the ServerApp refuses such a run without it)
    allow_no_privacy: bool = False
    secagg_clip: float = 10.0
    secagg_max_weight: float = 100000.0
    #: ring bits of a secure-aggregation round without site-level DP; 0: what it needs (<= 32)
    secagg_bits: int = 0
    faults: str = ""
    site_level_dp: bool = False
    site_level_dp_mode: str = "distributed"
    site_level_dp_epsilon: float = 8.0
    site_level_dp_delta: float = 1e-5
    site_level_dp_clip: float = 1.0
    site_level_dp_noise_multiplier: float = -1.0
    site_level_dp_cohort: int = 0
    site_level_dp_bits: int = 32
    site_level_dp_underflow: str = "refuse"
    canaries: int = 0
    canary_site: str = ""
    canary_length: int = 16
    canary_seed: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            expected = f.type
            key = _kebab(f.name)
            if expected == "int" and type(value) is not int:
                raise ConfigError(f"`{key}` must be an integer, got {value!r}")
            if expected == "float":
                if type(value) is int:
                    object.__setattr__(self, f.name, float(value))
                elif type(value) is not float:
                    raise ConfigError(f"`{key}` must be a number, got {value!r}")
            if expected == "str" and not isinstance(value, str):
                raise ConfigError(f"`{key}` must be a string, got {value!r}")
            if expected == "bool" and type(value) is not bool:
                raise ConfigError(f"`{key}` must be true or false, got {value!r}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                value = getattr(self, key.replace("-", "_"))
                raise ConfigError(f"`{key}` must be {rule}, got {value!r}")

        need(self.num_server_rounds > 0, "num-server-rounds", "> 0")
        need(0.0 < self.fraction_train <= 1.0, "fraction-train", "in (0, 1]")
        need(self.min_sites >= 1, "min-sites", ">= 1")
        need(self.local_steps > 0, "local-steps", "> 0")
        need(self.batch_size > 0, "batch-size", "> 0")
        need(8 <= self.max_seq_len <= 1 << 16, "max-seq-len", "in [8, 65536]")
        need(0.0 < self.learning_rate < 10.0, "learning-rate", "in (0, 10)")
        need(self.aggregation in AGGREGATION_MODES, "aggregation", f"one of {AGGREGATION_MODES}")
        need(self.lora_r > 0, "lora-r", "> 0")
        need(self.lora_alpha > 0, "lora-alpha", "> 0")
        need(0.0 <= self.lora_dropout < 1.0, "lora-dropout", "in [0, 1)")
        need(bool(self.target_modules) and (self.target_modules == ["auto"]
                                            or "auto" not in self.target_modules),
             "lora-target-modules", "a comma-separated list of module names, or 'auto'")
        need(bool(self.model.strip()), "model", "a path or hub id")
        need(0.0 < self.eval_fraction < 1.0, "eval-fraction", "in (0, 1)")
        need(self.device in DEVICES, "device", f"one of {DEVICES}")
        need(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        need(self.base_quantization in BASE_QUANTIZATIONS, "base-quantization",
             f"one of {BASE_QUANTIZATIONS}")
        need(self.base_quantization == "none" or self.device != "cpu", "base-quantization",
             "'none' when device is 'cpu' (4-bit base weights need CUDA)")
        need(self.round_timeout > 0, "round-timeout", "> 0")
        need(self.hello_timeout > 0, "hello-timeout", "> 0")
        need(0.01 <= self.poll_interval <= 10.0, "poll-interval", "in [0.01, 10]")
        need(self.max_eval_examples >= 0, "max-eval-examples", ">= 0")
        need(self.secagg_clip > 0, "secagg-clip", "> 0")
        need(self.secagg_max_weight >= 1, "secagg-max-weight", ">= 1")
        need(self.secagg_bits == 0 or 16 <= self.secagg_bits <= 64, "secagg-bits",
             "0 (automatic) or in [16, 64]")
        need(not self.secagg or bool(self.secagg_enrolment), "secagg-enrolment",
             "the path of the enrolment list when secagg is on")
        need(self.dp_noise_multiplier == -1.0 or self.dp_noise_multiplier >= 0.0,
             "dp-noise-multiplier", ">= 0 (or -1: left to each site)")
        self._check_site_level_dp(need)
        need(0 <= self.canaries <= 100_000, "canaries", "in [0, 100000] (0: no canary audit)")
        need(2 <= self.canary_length <= self.max_seq_len, "canary-length",
             f"in [2, max-seq-len={self.max_seq_len}]")
        need(self.canaries == 0 or bool(self.canary_site.strip()), "canary-site",
             "the name of the site that plants the canaries when canaries > 0")

    def _check_site_level_dp(self, need: Any) -> None:
        need(self.site_level_dp_mode in SITE_LEVEL_DP_MODES, "site-level-dp-mode",
             f"one of {SITE_LEVEL_DP_MODES}")
        need(math.isfinite(self.site_level_dp_epsilon) and self.site_level_dp_epsilon > 0,
             "site-level-dp-epsilon", "> 0")
        need(0.0 < self.site_level_dp_delta < 1.0, "site-level-dp-delta", "in (0, 1)")
        need(math.isfinite(self.site_level_dp_clip) and self.site_level_dp_clip > 0,
             "site-level-dp-clip", "> 0")
        need(self.site_level_dp_noise_multiplier == -1.0
             or (math.isfinite(self.site_level_dp_noise_multiplier)
                 and self.site_level_dp_noise_multiplier >= 0),
             "site-level-dp-noise-multiplier", ">= 0 (or -1: calibrated to site-level-dp-epsilon)")
        need(self.site_level_dp_cohort >= 0, "site-level-dp-cohort", ">= 0 (0: the round's cohort)")
        need(16 <= self.site_level_dp_bits <= 52, "site-level-dp-bits", "in [16, 52]")
        need(self.site_level_dp_underflow in SITE_LEVEL_DP_UNDERFLOW, "site-level-dp-underflow",
             f"one of {SITE_LEVEL_DP_UNDERFLOW}")
        need(not self.site_level_dp or self.secagg, "site-level-dp",
             "false unless secagg is on (the noised sum travels through secure aggregation)")

    @property
    def target_modules(self) -> list[str]:
        """LoRA target module names, parsed from the comma-separated string.

        ``["auto"]`` stands for the defaults of the base model's architecture, resolved by
        :func:`protocol.adapter.lora_config` for the coordinator and the sites alike.
        """
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, allow_extra: bool = False) -> RunConfig:
        """Build from a kebab-case mapping such as Flower's ``context.run_config``.

        Keys this class does not know are an error unless ``allow_extra`` is set, in which
        case they are kept in :attr:`extra` for the components that own them (DP,
        secure aggregation).
        """
        known = {_kebab(f.name): f.name for f in fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in mapping.items():
            if key in known:
                kwargs[known[key]] = value
            elif allow_extra:
                extra[key] = value
            else:
                raise ConfigError(f"unknown configuration key `{key}` (value {value!r})")
        return cls(**kwargs, extra=extra)

    def to_mapping(self) -> dict[str, Any]:
        """Return the kebab-case mapping, extras included (JSON-serialisable)."""
        out = {_kebab(f.name): getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out.update(dict(self.extra))
        return out

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
