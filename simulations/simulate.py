"""``confide simulate``: N virtual sites on this machine, the researcher's command.

Checks every flag and input before starting anything (bad input: a :class:`UsageError`
naming the flag and value, exit status 2), enrols the virtual sites for secure aggregation,
prints the DP and secure-aggregation settings, runs the simulation
(:mod:`simulations.runner`), then writes the audit report and prints a summary of the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from protocol.console import EXIT_FAILED, UsageError
from simulations.flags import add_compute_args, compute_overrides
from simulations.flags import positive_float as _positive_float
from simulations.flags import positive_int as _positive_int

__all__ = ["add_simulate_parser", "dp_summary", "enrol_sites", "run_config"]


def add_simulate_parser(sub: Any) -> None:
    """Add ``simulate`` to the ``confide`` subparsers (``handler``: runs it)."""
    p = sub.add_parser("simulate", help="run N virtual sites on this machine (Flower simulation)")
    p.add_argument("--sites", type=_positive_int("--sites"), default=3, help="virtual sites")
    p.add_argument("--rounds", type=_positive_int("--rounds"), default=3, help="server rounds")
    p.add_argument("--out", required=True, help="RUN_DIR for adapter, metrics and report")
    p.add_argument("--model", default="embedded",
                   help="local checkpoint directory or hub id (default: embedded)")
    p.add_argument("--data", default="embedded",
                   help="directory with one folder (or file) per site (default: bundled demo)")
    p.add_argument("--local-steps", type=_positive_int("--local-steps"), default=None)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None)
    p.add_argument("--learning-rate", type=_positive_float("--learning-rate"), default=None)
    p.add_argument("--max-seq-len", type=_positive_int("--max-seq-len"), default=None)
    p.add_argument("--aggregation", choices=("frozen-a", "fedavg"), default=None)
    p.add_argument("--lora-r", type=_positive_int("--lora-r"), default=None)
    p.add_argument("--lora-alpha", type=_positive_int("--lora-alpha"), default=None)
    p.add_argument("--lora-dropout", type=float, default=None)
    p.add_argument("--lora-target-modules", default=None,
                   help="comma-separated, e.g. q_proj,v_proj")
    p.add_argument("--fraction-train", type=float, default=None)
    p.add_argument("--min-sites", type=_positive_int("--min-sites"), default=None)
    p.add_argument("--seed", type=int, default=None)
    add_compute_args(p)  # --device, --precision, --gradient-checkpointing, ...
    p.add_argument("--cpus-per-site", type=_positive_int("--cpus-per-site"), default=1,
                   help="CPU cores Flower reserves per virtual site")
    p.add_argument("--max-eval-examples", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue a crashed run in --out")
    p.add_argument("--secagg", choices=("on", "off"), default="on",
                   help="secure aggregation of the masked updates (default on)")
    p.add_argument("--secagg-clip", type=_positive_float("--secagg-clip"), default=None,
                   help="L2 bound on each site's delta before encoding (default 10)")
    p.add_argument("--secagg-bits", type=int, default=None,
                   help="ring bits per parameter without site-level DP: 16 to 64; default 0, "
                        "what the round needs (at most 32)")
    dp = p.add_argument_group("differential privacy (each virtual site's own policy)")
    dp.add_argument("--dp", choices=("on", "off"), default="on",
                    help="DP-SGD at every site (default on)")
    dp.add_argument("--epsilon", type=_positive_float("--epsilon"), default=8.0,
                    help="each site's budget epsilon over all rounds and runs (default 8)")
    dp.add_argument("--delta", type=float, default=None,
                    help="delta (default: min(1e-5, 1/(10 n)) for a site with n examples)")
    dp.add_argument("--max-grad-norm", type=_positive_float("--max-grad-norm"), default=0.01,
                    help="per-sequence clipping bound C (default 0.01: below the LoRA "
                         "gradient norms of the embedded model; with AdamW the update is "
                         "then independent of C's scale)")
    dp.add_argument("--noise-multiplier", type=float, default=None,
                    help="fixed sigma (default: calibrated so the planned rounds fit the budget)")
    dp.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
    dp.add_argument("--grad-sample-mode", choices=("hooks", "ghost"), default="hooks")
    dp.add_argument("--secure-mode", action="store_true",
                    help="OS CSPRNG for sampling and noise, as at a deployed site (default: a "
                         "secret per-site seed in the site's state directory; repeatable)")
    from simulations.site_level_dp_cli import add_site_level_dp_args

    add_site_level_dp_args(p)
    from simulations.canary_run import add_canary_args

    add_canary_args(p)
    p.add_argument("--quiet", action="store_true", help="do not stream the server log")
    p.add_argument("--faults", default=None,
                   help="scenario: crash sites at given stages, e.g. 'bank@unmask@2,law@train'")
    p.set_defaults(handler=_simulate)


def run_config(args: argparse.Namespace) -> Any:
    """Build the validated RunConfig of parsed ``simulate`` flags (bad input: UsageError)."""
    from protocol.config import ConfigError, RunConfig
    from protocol.model_ref import ModelError, resolve_data_dir, resolve_model
    from protocol.run_folder import RunFolder

    try:
        model = resolve_model(args.model)
    except ModelError as exc:
        raise UsageError(f"--model: {exc}", field="--model", value=args.model) from None
    if not Path(model).is_dir():  # a hub id: check we can at least read its config
        try:
            from transformers import AutoConfig
            AutoConfig.from_pretrained(model)
        except Exception as exc:  # noqa: BLE001 - any failure means unusable
            raise UsageError(f"--model {args.model!r}: cannot load it as a hub id ({exc})",
                             field="--model", value=args.model) from None
    try:
        data = resolve_data_dir(args.data)
    except ModelError as exc:
        raise UsageError(f"--data: {exc}", field="--data", value=args.data) from None
    _check_data(Path(data), args.sites)
    out = Path(args.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} exists and is not a directory", field="--out",
                         value=args.out)
    if RunFolder(out).state_path.exists() and not args.resume:
        raise UsageError(f"--out {args.out!r} already holds a run; pass --resume to continue it "
                         "or choose another directory", field="--out", value=args.out)
    if args.resume and not RunFolder(out).state_path.exists():
        raise UsageError(f"--resume: {args.out!r} holds no run to resume", field="--out",
                         value=args.out)
    policy = _site_policy(args)
    overrides: dict[str, Any] = {
        "num-server-rounds": args.rounds, "model": model, "data-dir": data,
        "out-dir": str(out), "resume": bool(args.resume),
        "dp": policy is not None, "dp-policy": json.dumps(policy) if policy else "",
        "sites-state-dir": str(RunFolder(out).sites_dir),
        "secagg": args.secagg == "on",
        "secagg-enrolment": str(RunFolder(out).enrolment_path) if args.secagg == "on" else "",
        "min-sites": min(args.sites, args.min_sites or min(args.sites, 2)),
        # the user turned a part of the privacy stack off with a flag: an explicit choice
        "allow-no-privacy": args.dp == "off" or args.secagg == "off",
    }
    if args.secagg_clip is not None:
        overrides["secagg-clip"] = args.secagg_clip
    from simulations.site_level_dp_cli import site_level_dp_overrides

    overrides.update(site_level_dp_overrides(args))
    overrides.update(compute_overrides(args))
    for flag in ("faults", "local_steps", "batch_size", "learning_rate", "max_seq_len",
                 "aggregation", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                 "fraction_train", "seed", "max_eval_examples", "secagg_bits"):
        value = getattr(args, flag)
        if value is not None:
            overrides[flag.replace("_", "-")] = value
    try:
        cfg = RunConfig.from_mapping(overrides)
        if args.canaries:
            from client.site import site_spec
            from simulations.canary_run import canary_overrides

            names = [site_spec({"partition-id": i, "num-partitions": args.sites}, cfg).name
                     for i in range(args.sites)]
            try:
                extra = canary_overrides(args, names[0], names)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            cfg = RunConfig.from_mapping({**cfg.to_mapping(), **extra})
        return cfg
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


#: policy fields whose flag has another name (the others: the field in kebab case)
_POLICY_FLAGS = {"budget_epsilon": "epsilon"}


def _site_policy(args: argparse.Namespace) -> dict[str, Any] | None:
    """Build the policy every virtual site sets for itself (``--dp off``: none)."""
    if args.dp == "off":
        return None
    from privacy.policy import PolicyError, SitePrivacyPolicy

    doc: dict[str, Any] = {
        "budget-epsilon": args.epsilon, "max-grad-norm": args.max_grad_norm,
        "accountant": args.accountant, "grad-sample-mode": args.grad_sample_mode,
        "secure-mode": bool(args.secure_mode),
    }
    if args.delta is not None:
        doc["delta"] = args.delta
    if args.noise_multiplier is not None:
        doc["noise-multiplier"] = args.noise_multiplier
    try:
        SitePrivacyPolicy.from_mapping(doc)
    except PolicyError as exc:
        field = exc.field
        flag = "--" + (_POLICY_FLAGS.get(field) or field.replace("_", "-")) if field else "--dp"
        raise UsageError(f"{flag}: {exc}", field=flag, value=exc.value) from None
    return doc


def enrol_sites(cfg: Any, num_sites: int) -> None:
    """Stand in for each site's operator: an identity key per site, and the enrolment list."""
    from client.identity import IDENTITY_FILE
    from client.site import site_spec
    from privacy.secagg import generate_identity_key, identity_private_bytes
    from privacy.secagg.keys import identity_public_bytes, load_identity_private_key
    from protocol.io import atomic_write_bytes, atomic_write_json

    enrolment: dict[str, str] = {}
    for i in range(num_sites):
        spec = site_spec({"partition-id": i, "num-partitions": num_sites}, cfg)
        path = spec.state_dir / IDENTITY_FILE
        if path.exists():
            key = load_identity_private_key(path.read_bytes())
        else:
            key = generate_identity_key()
            atomic_write_bytes(path, identity_private_bytes(key), mode=0o600)
        enrolment[spec.name] = identity_public_bytes(key).hex()
    atomic_write_json(cfg.secagg_enrolment, enrolment)


def dp_summary(cfg: Any, num_sites: int) -> str:
    """One screen: per site budget, delta, sigma, q, C, planned steps and projected epsilon."""
    from client.privacy_agent import policy_from_config, projected_summary
    from client.site import load_site_data, site_spec
    from privacy.ledger import PrivacyLedger

    policy = policy_from_config({}, cfg.dp_policy)
    if policy is None:
        return "differential privacy: off (sites train without DP; no epsilon is claimed)"
    from transformers import AutoTokenizer

    # its note that a site text is longer than the model's window says nothing here: examples
    # are cut to max-seq-len when they are tokenised for training
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    tok = AutoTokenizer.from_pretrained(cfg.model)
    lines = [f"differential privacy (site policies): {policy.summary()}",
             f"{'site':<14}{'n':>6}{'budget':>8}{'delta':>10}{'sigma':>8}{'q':>9}{'C':>6}"
             f"{'steps':>7}{'proj. eps':>10}{'spent':>8}"]
    for i in range(num_sites):
        spec = site_spec({"partition-id": i, "num-partitions": num_sites}, cfg)
        data = load_site_data(spec, cfg, tok)
        history = PrivacyLedger(spec.state_dir).history() if spec.state_dir else []
        spent_now = 0.0
        if history:
            from privacy.accounting import epsilon as _eps
            spent_now = _eps(history, delta=policy.resolve_delta(len(data.train)),
                             accountant=policy.accountant)
        try:
            row = projected_summary(policy, site=spec.name, num_examples=len(data.train),
                                    batch_size=cfg.batch_size, local_steps=cfg.local_steps,
                                    planned_rounds=cfg.num_server_rounds, history=history)
        except Exception as exc:  # noqa: BLE001 - e.g. budget already spent
            lines.append(f"{spec.name:<14}{len(data.train):>6}  cannot plan: {exc}")
            continue
        lines.append(f"{row['site']:<14}{row['n']:>6}{row['budget']:>8g}{row['delta']:>10.2e}"
                     f"{row['sigma']:>8.3f}{row['q']:>9.4f}{row['C']:>6g}{row['steps']:>7}"
                     f"{row['projected_epsilon']:>10.3f}{spent_now:>8.3f}")
    return "\n".join(lines)


def _check_data(root: Path, n_sites: int) -> None:
    """Fail fast on a missing, empty or malformed site file before starting Flower."""
    from client.data import DataError, load_examples, shard_for_partition

    try:
        paths = {shard_for_partition(root, i, n_sites)[0] for i in range(n_sites)}
        for path in sorted(paths):
            if len(load_examples(path)) < 2:
                raise DataError(f"site data {path} holds fewer than 2 examples")
    except DataError as exc:
        raise UsageError(f"--data: {exc}", field="--data", value=str(root)) from None


def _summary(out: Path, cfg: Any) -> str:
    """Summarise a run on one screen: rounds, what was learned, spent and seen, what next.

    Per-site tables are in the audit report (``RUN_DIR/audit/``), not here.
    """
    from protocol.run_folder import RunFolder

    folder = RunFolder(out)
    rows = folder.read_metrics()
    if not rows:
        return "(no metrics recorded)"
    parts = folder.read_participation()
    site_eps = {p.round: float(p.site_level_dp["epsilon_after"])  # site-level eps so far
                for p in parts
                if p.site_level_dp is not None and p.site_level_dp.get("released") is True}
    head = f"{'round':>5}  {'eval loss':>9}  {'perplexity':>10}  {'sites':>5}  {'max eps':>8}  "
    lines = [head + (f"{'site eps':>8}  " if site_eps else "") + f"{'time s':>7}"]
    last_site = 0.0
    for r in rows:
        sites = "-" if r.contributed is None else str(len(r.contributed))
        max_eps = f"{max(r.epsilon.values()):.3f}" if r.epsilon else "-"
        loss, ppl = ((f"{r.held_out()[0]:>9.4f}", f"{r.held_out()[1]:>10.2f}") if r.evaluated
                     else (f"{'n/a':>9}", f"{'n/a':>10}"))
        line = f"{r.round:>5}  {loss}  {ppl}  {sites:>5}  {max_eps:>8}  "
        if site_eps:
            last_site = site_eps.get(r.round, last_site)
            line += f"{('-' if r.round == 0 else f'{last_site:.3f}'):>8}  "
        lines.append(line + f"{r.round_time_s or 0.0:>7.1f}")
    lines.append("(max eps: the largest example-level eps of a site so far" + (
        "; site eps: site-level eps of the released aggregates so far)" if site_eps else ")"))
    lines += folder.unreleased_rounds()  # never silent: each with its recorded reason
    lines += [f"round {r.round}: no held-out evaluation ({r.eval_unavailable})"
              for r in rows if not r.evaluated]
    lines.append("")
    lines += _story(folder, rows, cfg, site_eps)
    return "\n".join(lines)


def _story(folder: Any, rows: Any, cfg: Any, site_eps: dict[int, float]) -> list[str]:
    """Tell what the run shows in a few lines: learning, privacy spent, what the server saw."""
    evaluated = [r for r in rows if r.evaluated]
    if len(evaluated) < 2 or evaluated[0].round != 0:
        out = ["learned:   not shown: the base and a later round were not both evaluated"]
    else:
        first, last = evaluated[0], evaluated[-1]
        (_, base), (_, after) = first.held_out(), last.held_out()
        drop = 100.0 * (1.0 - after / base)
        out = [f"learned:   held-out perplexity {base:.2f} (base) -> {after:.2f} after round "
               f"{last.round} " + (f"({drop:.1f}% lower)" if drop >= 0 else "(no improvement)")]
    eps: dict[str, float] = {}
    declined: set[str] = set()
    for r in rows:
        eps.update(r.epsilon or {})
        declined.update(r.declined or {})
    if not eps:
        out.append("privacy:   example-level DP off (no epsilon is claimed)")
    else:
        lo, hi = min(eps.values()), max(eps.values())
        spread = f"{hi:.3f}" if hi - lo < 5e-4 else f"{lo:.3f} to {hi:.3f}"
        out.append(f"privacy:   example-level eps {spread} at each of {len(eps)} sites "
                   "(each site's own budget and ledger)"
                   + (f"; {len(declined)} site(s) declined a round" if declined else ""))
    if site_eps:
        out.append(f"           site-level eps {site_eps[max(site_eps)]:.3f} of the released "
                   "aggregates")
    if cfg.secagg:
        out.append("seen:      the coordinator held only sums of the sites' masked updates and "
                   "held-out losses\n           (secure aggregation); per-site figures: each "
                   "site's own log (sites/<site>/) and the audit report")
    else:
        out.append("seen:      the coordinator saw every site's update and figures in the clear "
                   "(--secagg off)")
    out.append("next:      site-level DP over 30 sites: make demo-site-level\n"
               "           a real LLM (SmolLM2-135M, same privacy stack): make demo-real")
    return out


def _simulate(args: argparse.Namespace) -> int:
    from simulations.runner import SimulationError, report_unreleased, run_simulation

    cfg = run_config(args)
    out = Path(cfg.out_dir)
    print(f"confide simulate: {args.sites} sites x {cfg.num_server_rounds} rounds, "
          f"model {cfg.model}, data {cfg.data_dir}, out {out}", flush=True)
    if cfg.secagg:
        enrol_sites(cfg, args.sites)
        print(f"secure aggregation: on ({args.sites} enrolled sites, delta clip "
              f"{cfg.secagg_clip:g}); the coordinator sees only the sum", flush=True)
    else:
        print("secure aggregation: off (the coordinator sees each update)", flush=True)
    from simulations.site_level_dp_cli import site_level_dp_summary

    print(site_level_dp_summary(cfg), flush=True)
    try:
        print(dp_summary(cfg, args.sites), flush=True)
    except Exception as exc:  # noqa: BLE001 - a broken ledger, a bad policy: refuse to start
        raise UsageError(f"site privacy state: {exc}") from None
    t0 = time.perf_counter()
    try:
        code = run_simulation(cfg, num_sites=args.sites, cpus_per_site=args.cpus_per_site,
                              quiet=args.quiet)
    except SimulationError as exc:
        print(f"confide simulate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from protocol.run_folder import RunFolder, RunFolderError
    from protocol.run_rows import RUN_COMPLETED

    folder = RunFolder(out)
    try:
        state = folder.read_state()
    except RunFolderError:
        state = None
    if code != 0 or state is None or state.status != RUN_COMPLETED:
        report_unreleased(out, label="confide simulate: ", stream=sys.stderr)
        print(f"confide simulate: the run did not complete (flwr exit {code}, state "
              f"{state.status if state else 'missing'}, last round "
              f"{state.completed_round if state else '-'}); "
              f"see the log above; resume with --resume --out {out}", file=sys.stderr)
        return EXIT_FAILED
    canary_note = ""
    if cfg.canaries:
        canary_note = _canary_audit(out, cfg)
    try:
        from privacy.audit.write import write_audit

        report, paths = write_audit(out)
        audit_note = f"  audit:    {paths.get('html', folder.audit_dir)} (+ .json, .md)"
    except Exception as exc:  # noqa: BLE001 - the run is done; say the report failed
        audit_note = f"  audit:    FAILED to write the report: {exc}"
    print()
    print(_summary(out, cfg))
    print()
    print(f"done in {time.perf_counter() - t0:.0f} s")
    print(f"  adapter:  {folder.final_adapter}")
    print(f"  metrics:  {folder.metrics_path}")
    print(f"  run info: {folder.run_path}")
    print(audit_note)
    if canary_note:
        print(canary_note)
    return 0


def _canary_audit(out: Path, cfg: Any) -> str:
    """Score the planted canaries into RUN_DIR's canary audit file; one summary line."""
    from protocol.io import atomic_write_json
    from protocol.run_folder import RunFolder
    from simulations.canary_run import score_planted

    try:
        r = score_planted(out, cfg)
    except Exception as exc:  # noqa: BLE001 - the run is done; say the audit failed
        return f"  canaries: FAILED to score the planted canaries: {exc}"
    atomic_write_json(RunFolder(out).canary_audit_path, {"runs": [r]})
    formal = "inf (DP off)" if r["formal_epsilon"] is None else f"{r['formal_epsilon']:.3f}"
    line = (f"  canaries: {r['canaries']} at {r['site_id']}: empirical eps >= "
            f"{r['epsilon_lower_bound']:.3f} ({r['correct']}/{r['guesses']} guesses right, "
            f"95%), formal eps {formal}")
    if r["exceeds_formal"]:
        line += "  RED FLAG: exceeds the formal eps (implementation or accounting broken)"
    return line
