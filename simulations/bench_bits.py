"""Held-out loss and upload bytes per ring size: lean secure aggregation against fp32.

Runs ``--rounds`` rounds of federated LoRA over ``--sites`` sites of the embedded default
(or ``--model``), in one process, with the product's own training and codec, once per
setting: plaintext fp32 FedAvg, then secure aggregation at 12/16/20/24/32 ring bits
(``server.secure_round.plan_ring``: clip, weight, stochastic rounding to the finest grid the
ring holds for the cohort, the weight in exact limbs). Each secure round runs the real
protocol in this process (:class:`privacy.secagg.SiteSession` at each site,
:class:`privacy.secagg.ServerSession` at the coordinator: keys, Shamir shares, pairwise and
self masks, the consistency check, the unmask), and every request and reply crosses a
serialization round trip, as Flower's wire carries it (``recorddict_to_proto`` then
``recorddict_from_proto``), before the other side reads it. Every setting uses the same
seeds, so the runs differ by quantisation alone (the masks cancel exactly in Z/2^k).

Bytes per site per round are measured, not computed from the bit count: the serialized size
of the site's replies as the product builds them (``protocol.messages.reply_content``):

* ``upload``: the message that carries the update: the plain train reply (the fp32 delta),
  the masked-input reply (the masked ring vector), or Flower's SecAgg+ masked-parameters
  reply, built with Flower's own quantisation, masks and encoding
  (``flwr.client.mod.secaggplus_mod``: quantised to 2^22 levels, masked mod 2^32, sent as
  int64 ``.npy`` bytes; its loss is not run);
* ``all replies``: the site's replies of the round's every stage (secure aggregation's five;
  the plain round's one).

    python -m simulations.bench_bits [--sites 3] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.common import ndarray_to_bytes
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as FlowerKey
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from client.model import get_adapter_state, load_site_model, resolve_device, set_adapter_state
from client.site import load_site_data, site_spec
from client.train import evaluate, train_steps
from privacy.secagg import (
    SecAggConfig,
    ServerSession,
    SiteSession,
    generate_identity_key,
    identity_public_bytes,
)
from protocol.adapter import initial_adapter_state, trainable_keys
from protocol.codec import Manifest, decode, encode, ring_dtype
from protocol.config import RunConfig
from protocol.messages import get_payload, put_payload, reply_content, state_to_record
from protocol.model_ref import resolve_data_dir, resolve_model
from protocol.secure_stats import append_weight, split_weight, weight_limbs
from protocol.wire import SECAGG_STAGES, Metric, Stage, Status
from server.aggregate import apply_delta, weighted_mean
from server.secure_round import plan_ring

__all__ = ["main"]

BITS = (12, 16, 20, 24, 32)
#: Flower's SecAggPlusWorkflow defaults: clipping range, quantisation levels, mask modulus
FLOWER_CLIP, FLOWER_LEVELS, FLOWER_MODULUS = 8.0, 1 << 22, 1 << 32


def _wire(content: RecordDict) -> tuple[int, RecordDict]:
    """Serialize ``content`` as Flower's wire does; its size and what the receiver reads."""
    proto = recorddict_to_proto(content)
    data = proto.SerializeToString()
    return len(data), recorddict_from_proto(type(proto).FromString(data))


class _Meter:
    """Bytes of each site's replies in one setting, by stage."""

    def __init__(self) -> None:
        self.upload: list[int] = []
        self.replies: list[int] = []

    def add(self, sizes: Mapping[str, int], upload_stage: str) -> None:
        self.upload.append(sizes[upload_stage])
        self.replies.append(sum(sizes.values()))


def _secure_sum(inputs: dict[int, np.ndarray], *, bits: int, rnd: int,
                identities: dict[int, Any], meter: _Meter) -> np.ndarray:
    """Run one round of the protocol over ``inputs`` (node -> ring vector); the unmasked sum."""
    nodes = sorted(inputs)
    registry = {v: identity_public_bytes(identities[v]) for v in nodes}
    config = SecAggConfig.create(run_id=1, round=rnd, cohort=nodes, modulus_bits=bits,
                                 vector_length=len(inputs[nodes[0]]),
                                 graph_seed=os.urandom(32))
    server = ServerSession(config=config, registry=registry)
    sites: dict[int, SiteSession] = {}
    sizes: dict[int, dict[str, int]] = {v: {} for v in nodes}
    make = {Stage.ADVERTISE_KEYS: server.advertise_requests,
            Stage.SHARE_KEYS: server.share_keys_requests,
            Stage.MASKED_INPUT: server.masked_input_requests,
            Stage.CONSISTENCY_CHECK: server.consistency_requests,
            Stage.UNMASK: server.unmask_requests}
    take = {Stage.ADVERTISE_KEYS: server.receive_advertisement,
            Stage.SHARE_KEYS: server.receive_shares,
            Stage.MASKED_INPUT: server.receive_masked_input,
            Stage.CONSISTENCY_CHECK: server.receive_consistency,
            Stage.UNMASK: server.receive_unmask}
    for stage in SECAGG_STAGES:
        for v, request in make[stage]().items():
            request = get_payload(_wire(put_payload(RecordDict(), request))[1])
            if stage == Stage.ADVERTISE_KEYS:
                sites[v] = SiteSession.from_request(request, node_id=v,
                                                    identity_key=identities[v],
                                                    registry=registry)
                reply = sites[v].advertise_keys(request)
            elif stage == Stage.MASKED_INPUT:
                reply = sites[v].masked_input(request, vector=inputs[v])
            else:
                reply = getattr(sites[v], stage.replace("-", "_"))(request)
            size, received = _wire(reply_content(site=f"site-{v}", status=Status.OK,
                                                 payload=reply))
            sizes[v][stage] = size
            if not take[stage](v, get_payload(received)):
                raise RuntimeError(f"the server rejected site {v} at {stage}: "
                                   f"{server.rejections[-1][2]}")
    for v in nodes:
        meter.add(sizes[v], Stage.MASKED_INPUT)
    return server.finish().vector


def _secure_mean(deltas: list[dict[str, np.ndarray]], weights: list[int], *, bits: int,
                 clip: float, max_weight: float, seed: int, identities: dict[int, Any],
                 meter: _Meter) -> dict[str, np.ndarray]:
    """Return the secure path's weighted mean: encode, mask, sum mod 2^k, unmask, decode."""
    manifest = Manifest.from_arrays(deltas[0])
    n = len(deltas)
    k, scale = plan_ring(n_sites=n, clip=clip, max_weight=max_weight, dim=manifest.dim,
                         bits=bits)
    rng = np.random.default_rng(seed)
    inputs = {}
    for i, (delta, w) in enumerate(zip(deltas, weights, strict=True)):
        vec = encode(delta, manifest, clip_norm=clip, weight=float(w), scale=scale,
                     modulus_bits=k, rng=rng, max_weight=max_weight)
        inputs[i + 1] = append_weight(vec, w, modulus_bits=k, max_weight=max_weight, n_sites=n)
    total_vec = _secure_sum(inputs, bits=k, rnd=seed, identities=identities, meter=meter)
    vector, total = split_weight(total_vec, modulus_bits=k, max_weight=max_weight, n_sites=n)
    summed = decode(vector, manifest, scale=scale, modulus_bits=k)
    return {name: (v / float(total)).astype(np.float32) for name, v in summed.items()}


def _plain_upload(delta: dict[str, np.ndarray], weight: int, meter: _Meter) -> None:
    """Meter the plain train reply: the fp32 delta and the site's number of examples."""
    size, _ = _wire(reply_content(site="site", status=Status.OK,
                                  metrics={Metric.NUM_EXAMPLES: weight},
                                  arrays=state_to_record(delta)))
    meter.add({"train": size}, "train")


def _flower_upload(delta: dict[str, np.ndarray], weight: int, max_weight: float,
                   n_sites: int, meter: _Meter) -> None:
    """Meter Flower's SecAgg+ masked-parameters reply, built as ``secaggplus_mod`` does."""
    params = [np.asarray(delta[k], dtype=np.float64) for k in sorted(delta)]
    ratio = weight / max_weight
    q_ratio = round(ratio * FLOWER_LEVELS)
    quantized = quantize(parameters_multiply(params, q_ratio / FLOWER_LEVELS), FLOWER_CLIP,
                         FLOWER_LEVELS)
    quantized = factor_combine(q_ratio, quantized)
    shapes = [a.shape for a in quantized]
    masked = parameters_addition(quantized, pseudo_rand_gen(os.urandom(32), FLOWER_MODULUS,
                                                            shapes))
    for peer in range(n_sites - 1):  # pairwise masks, half added and half subtracted
        mask = pseudo_rand_gen(os.urandom(32), FLOWER_MODULUS, shapes)
        op = parameters_addition if peer % 2 else parameters_subtraction
        masked = op(masked, mask)
    masked = parameters_mod(masked, FLOWER_MODULUS)
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(
        {FlowerKey.MASKED_PARAMETERS: [ndarray_to_bytes(a) for a in masked]}, False)})
    size, _ = _wire(content)
    meter.add({"masked": size}, "masked")


def _run(setting: str, bits: int, *, sm: Any, sites: list[Any], cfg: RunConfig, rounds: int,
         clip: float, max_weight: float, meter: _Meter) -> float:
    state = initial_adapter_state(sm.shapes, seed=cfg.lora_seed)
    keys = trainable_keys(list(state), cfg.aggregation)
    pad_id = int(sm.tokenizer.pad_token_id)
    identities = {i + 1: generate_identity_key() for i in range(len(sites))}
    for rnd in range(rounds):
        deltas, weights = [], []
        for i, data in enumerate(sites):
            set_adapter_state(sm, state, aggregation=cfg.aggregation)
            train_steps(sm.model, data.train, steps=cfg.local_steps, batch_size=cfg.batch_size,
                        learning_rate=cfg.learning_rate, pad_id=pad_id, device=sm.device,
                        seed=cfg.seed + 1000 * rnd + i)
            local = get_adapter_state(sm)
            deltas.append({k: local[k] - state[k] for k in sorted(keys)})
            weights.append(len(data.train))
        if setting == "fp32":
            for delta, w in zip(deltas, weights, strict=True):
                _plain_upload(delta, w, meter)
            mean = weighted_mean(deltas, [float(w) for w in weights])
        else:
            mean = _secure_mean(deltas, weights, bits=bits, clip=clip, max_weight=max_weight,
                                seed=cfg.seed + rnd, identities=identities, meter=meter)
        state = apply_delta(state, mean)
    set_adapter_state(sm, state, aggregation=cfg.aggregation)
    losses = [evaluate(sm.model, d.held_out, batch_size=max(cfg.batch_size, 16), pad_id=pad_id,
                       device=sm.device) for d in sites]
    tokens = sum(r.num_tokens for r in losses)
    return sum(r.loss * r.num_tokens for r in losses) / tokens


def _row(setting: str, bits: int, dtype: str, loss: float | None, meter: _Meter,
         dim: int) -> dict[str, Any]:
    upload = float(np.mean(meter.upload))
    return {"setting": setting, "bits": bits, "dtype": dtype, "loss": loss,
            "upload_bytes": upload, "upload_bytes_max": max(meter.upload),
            "bytes_per_param": upload / dim, "all_replies_bytes": float(np.mean(meter.replies)),
            "messages_measured": len(meter.upload)}


def _print(rows: list[dict[str, Any]]) -> None:
    ref = next((r["loss"] for r in rows if r["bits"] == 32 and "confide" in r["setting"]), None)
    print(f"{'setting':<26}{'wire dtype':>11}{'held-out loss':>15}{'vs 32 bits':>11}"
          f"{'upload B':>11}{'B/param':>9}{'all replies B':>15}")
    for r in rows:
        loss = "n/a (not run)" if r["loss"] is None else f"{r['loss']:.4f}"
        rel = "" if r["loss"] is None or ref is None else f"{(r['loss'] - ref) / ref:+.2%}"
        replies = "n/a" if r["all_replies_bytes"] is None else f"{r['all_replies_bytes']:,.0f}"
        print(f"{r['setting']:<26}{r['dtype']:>11}{loss:>15}{rel:>11}{r['upload_bytes']:>11,.0f}"
              f"{r['bytes_per_param']:>9.3f}{replies:>15}")


def main(argv: list[str] | None = None) -> int:
    """Print the table of held-out loss and measured bytes per setting; exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-eval-examples", type=int, default=16)
    ap.add_argument("--clip", type=float, default=RunConfig().secagg_clip)
    ap.add_argument("--max-weight", type=float, default=0.0,
                    help="secagg-max-weight (0: the largest site's training-set size)")
    ap.add_argument("--bits", default=",".join(map(str, BITS)))
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    cfg = RunConfig.from_mapping({
        "local-steps": args.local_steps, "batch-size": args.batch_size,
        "max-eval-examples": args.max_eval_examples, "model": resolve_model(args.model),
        "data-dir": resolve_data_dir(args.data)})
    sm = load_site_model(cfg.model, device=resolve_device(cfg.device), r=cfg.lora_r,
                         alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         target_modules=cfg.target_modules)
    sites = [load_site_data(site_spec({"partition-id": i, "num-partitions": args.sites}, cfg),
                            cfg, sm.tokenizer) for i in range(args.sites)]
    max_weight = args.max_weight or float(max(len(d.train) for d in sites))
    dim = sum(int(np.prod(sm.shapes[k])) for k in trainable_keys(list(sm.shapes),
                                                                 cfg.aggregation))
    common = {"sm": sm, "sites": sites, "cfg": cfg, "rounds": args.rounds, "clip": args.clip,
              "max_weight": max_weight}
    plain = _Meter()
    rows = [_row("plaintext fp32", 32, "float32", _run("fp32", 0, meter=plain, **common),
                 plain, dim)]
    for bits in (int(b) for b in args.bits.split(",")):
        meter = _Meter()
        loss = _run("secagg", bits, meter=meter, **common)
        rows.append(_row(f"confide secagg {bits} bits", bits, str(ring_dtype(bits)), loss,
                         meter, dim))
    flower = _Meter()
    state = initial_adapter_state(sm.shapes, seed=cfg.lora_seed)
    for data in sites:  # the bytes depend on the shapes only: the initial adapter will do
        _flower_upload({k: state[k] for k in trainable_keys(list(state), cfg.aggregation)},
                       len(data.train), max_weight, args.sites, flower)
    rows.append({**_row("flower secagg+", 64, "int64", None, flower, dim),
                 "all_replies_bytes": None, "note": "masked mod 2^32, sent as int64 .npy"})
    limbs = weight_limbs(modulus_bits=16, n_sites=args.sites, max_weight=max_weight)[1]
    print(f"{args.sites} sites x {args.rounds} rounds x {cfg.local_steps} steps of batch "
          f"{cfg.batch_size}, {dim} LoRA parameters (+{limbs} weight limb(s) in the ring "
          f"vector at 16 bits), clip {args.clip:g}, max weight {max_weight:g}, no DP; bytes "
          "are serialized messages, mean per site per round")
    _print(rows)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"sites": args.sites, "rounds": args.rounds, "local_steps": cfg.local_steps,
             "batch_size": cfg.batch_size, "dim": dim, "clip": args.clip,
             "max_weight": max_weight, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
