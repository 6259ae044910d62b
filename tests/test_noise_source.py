"""DP-SGD noise no one else can predict: a coordinator's reconstruction from public values fails.

The attack is the one a coordinator can run against a site: regenerate the site's Poisson
coins and Gaussian noise from what it knows (the run's ``seed``, the round, the site's name,
n, σ, C and the adapter's shapes) and compare them with the site's released delta. With one
local AdamW step the delta is ``-lr * sign(noisy gradient)`` per coordinate, and with σ C far
above a coordinate of the clipped gradient sum, the sign is the noise's sign: a correct
reconstruction agrees on almost every coordinate, a wrong one on half.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from client.local_round import LocalUpdate, load_site, local_update
from privacy.ledger import PrivacyLedger
from privacy.noise_source import CSPRNG, SECRET_SEED_FILE, SEEDED, round_seed, site_secret_seed
from protocol.adapter import initial_adapter_state
from protocol.instructions import RoundInstructions
from protocol.messages import state_to_record
from protocol.wire import Status

SIGMA, CLIP, RUN_ID, ROUND = 4.0, 1.0, "noise-run", 1


def _site_round(tiny_model: Path, tiny_sites: Path, state: Path, *,
                node: dict[str, Any] | None = None, deployed: bool = True,
                run_extra: dict[str, Any] | None = None) -> tuple[LocalUpdate, Any, Any, Any]:
    """One real DP round of site ``alpha`` (deployed: node config names its data)."""
    policy = {"budget-epsilon": 50.0, "noise-multiplier": SIGMA, "max-grad-norm": CLIP}
    if deployed:
        node_config: dict[str, Any] = {
            "data-path": str(tiny_sites / "alpha"), "state-dir": str(state),
            "site-name": "alpha", **{f"dp-{k}": v for k, v in policy.items()}, **(node or {})}
        run_config: dict[str, Any] = {"model": str(tiny_model), "local-steps": 1, "dp": True}
    else:
        node_config = {"partition-id": 0, "num-partitions": 1}
        run_config = {"model": str(tiny_model), "data-dir": str(tiny_sites), "local-steps": 1,
                      "dp": True, "sites-state-dir": str(state.parent),
                      "dp-policy": json.dumps({**policy, "secure-mode": False})}
    run_config.update(run_extra or {})
    ctx = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                  run_config=run_config)
    cfg, sm, data = load_site(ctx)
    arrays = state_to_record(initial_adapter_state(sm.shapes, seed=0))
    instr = RoundInstructions.for_round(cfg.replace(batch_size=8, num_server_rounds=1),
                                        round_num=ROUND, run_id=RUN_ID)
    upd = local_update(instr, arrays, ctx)
    assert upd.status == Status.OK and upd.delta is not None, upd.reason
    return upd, cfg, sm, data


def _regenerate_noise(seed: int, sm: Any, num_examples: int) -> dict[str, np.ndarray]:
    """The noise of step 1 from a seed, as a seeded site draws it (coins, then each tensor)."""
    gen = torch.Generator().manual_seed(seed)
    torch.rand(num_examples, generator=gen)  # step 1's Poisson coins
    out = {}
    for name, p in sm.model.named_parameters():
        if p.requires_grad:
            noise = torch.normal(0.0, SIGMA * CLIP, size=tuple(p.shape), generator=gen,
                                 dtype=p.dtype)
            out[name.replace(".default", "")] = noise.numpy()
    return out


def _public_seed(cfg_seed: int, round_num: int, site: str) -> int:
    """What a coordinator computes from public values (the site's seed before this change)."""
    digest = hashlib.sha256(f"{cfg_seed}|{round_num}|{site}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _sign_agreement(delta: dict[str, np.ndarray], noise: dict[str, np.ndarray]) -> float:
    assert set(delta) == set(noise)
    released = np.concatenate([-delta[k].ravel() for k in sorted(delta)])
    guess = np.concatenate([noise[k].ravel() for k in sorted(delta)])
    assert released.size > 1000 and np.count_nonzero(released) == released.size
    return float(np.mean(np.sign(released) == np.sign(guess)))


def test_a_coordinator_cannot_regenerate_a_deployed_sites_noise_from_public_values(
        tmp_path: Path, tiny_model: Path, tiny_sites: Path) -> None:
    upd, cfg, sm, data = _site_round(tiny_model, tiny_sites, tmp_path / "alpha")
    assert upd.delta is not None
    guess = _regenerate_noise(_public_seed(cfg.seed, ROUND, "alpha"), sm, len(data.train))
    agreement = _sign_agreement(upd.delta, guess)
    assert agreement < 0.6, f"the coordinator predicted {agreement:.1%} of the noise signs"
    entry = PrivacyLedger(tmp_path / "alpha").entries[-1]
    assert entry.status == "trained" and entry.noise_source == CSPRNG
    assert not (tmp_path / "alpha" / SECRET_SEED_FILE).exists()  # no seed at a CSPRNG site


def test_a_policy_from_the_coordinator_cannot_turn_the_csprng_off_at_a_deployed_site(
        tmp_path: Path, tiny_model: Path, tiny_sites: Path) -> None:
    # the site sets no dp-* keys; the run config's stand-in policy asks for seeded noise
    node = {"site-name": "alpha", "data-path": str(tiny_sites / "alpha"),
            "state-dir": str(tmp_path / "alpha")}
    ctx_policy = json.dumps({"budget-epsilon": 50.0, "noise-multiplier": SIGMA,
                             "max-grad-norm": CLIP, "secure-mode": False})
    upd, cfg, sm, data = _site_round(
        tiny_model, tiny_sites, tmp_path / "alpha", node=node,
        run_extra={"dp-policy": ctx_policy})
    assert upd.delta is not None
    assert PrivacyLedger(tmp_path / "alpha").entries[-1].noise_source == CSPRNG
    guess = _regenerate_noise(_public_seed(cfg.seed, ROUND, "alpha"), sm, len(data.train))
    assert _sign_agreement(upd.delta, guess) < 0.6


@pytest.mark.parametrize("deployed", [True, False], ids=["site-turned-it-off", "simulation"])
def test_seeded_noise_is_keyed_by_the_sites_secret_seed_only(
        tmp_path: Path, tiny_model: Path, tiny_sites: Path, deployed: bool) -> None:
    state = tmp_path / "alpha"
    node = {"dp-secure-mode": False} if deployed else None
    upd, cfg, sm, data = _site_round(tiny_model, tiny_sites, state, node=node,
                                     deployed=deployed)
    assert upd.delta is not None
    assert PrivacyLedger(state).entries[-1].noise_source == SEEDED
    seed_file = state / SECRET_SEED_FILE
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    # the attack is right: whoever holds the site's secret seed regenerates the noise ...
    secret = site_secret_seed(state)
    own = _regenerate_noise(round_seed(secret, run_id=RUN_ID, round_num=ROUND), sm,
                            len(data.train))
    assert _sign_agreement(upd.delta, own) > 0.9
    # ... and the coordinator, holding only public values, does not
    public = _regenerate_noise(_public_seed(cfg.seed, ROUND, "alpha"), sm, len(data.train))
    assert _sign_agreement(upd.delta, public) < 0.6
    # the seed was created once and is reused, so a simulation reproduces itself
    again, *_ = _site_round(tiny_model, tiny_sites, state, node=node, deployed=deployed)
    assert again.delta is not None and site_secret_seed(state) == secret
    assert all(np.array_equal(again.delta[k], upd.delta[k]) for k in upd.delta)


def test_a_secret_seed_of_the_wrong_length_is_refused_not_replaced(tmp_path: Path) -> None:
    (tmp_path / SECRET_SEED_FILE).write_bytes(b"short")
    with pytest.raises(ValueError, match="must hold 32 bytes, got 5"):
        site_secret_seed(tmp_path)
    assert (tmp_path / SECRET_SEED_FILE).read_bytes() == b"short"
