"""Per-message fixed cost in deployment (``python -m simulations.bench_round --deployment``).

This bench starts a real SuperLink (TLS + SuperNode auth) and one real ``confide client`` on
127.0.0.1, submits a bench ServerApp that sends ``--repeats`` messages of each kind to the
site one at a time (the kinds in turn) through the coordinator's own exchange
(``server.rounds.exchange``, its ``poll-interval``), and reports per kind the round trip
(push -> reply), the training or evaluation inside it (the reply's own timing metrics, less
any model load the site's log records) and their difference, the fixed per-message overhead
(processes, imports, model loads, Flower's hops and waits). The kinds are ``query.hello``,
``evaluate``, ``train`` and ``train+evaluate`` (a train message that also evaluates the
adapter it carries, as every round's does with ``eval-in-train``). From those it prices one
secure round with secure evaluation per site (:func:`messages_per_round`,
:func:`secure_round_cost`), with the evaluation in the train message (the default) and as a
sum of its own, and prints the overhead's share of each. It also reports, in this process,
what importing the ClientApp costs and whether the non-training stages pull in torch.

:func:`run_worker_bench` runs it for each site loop of :data:`SITE_LOOPS` asked for
(``site.toml`` keys): ``off``, Flower's own (a fresh ``flwr-clientapp`` process loads torch
and the model for every message, 3 s polling); ``worker``, the resident worker alone
(:mod:`client.worker`); ``on``, the default (worker, the site's SuperNode process running
each message in-process, :mod:`client.supernode_process`); and prints them side by side.
The coordinator's SuperLink and ServerApp share the site's cores here, which slows the
site's training; so it also times the same ``train+evaluate`` messages handled by the
site's ClientApp in a process of its own (:func:`site_alone_work`) and weighs each round's
fixed overhead against that work too (``site alone: share``).

A priced round counts the messages on a site's critical path (:func:`messages_per_round`):
with ``work-ahead`` (the default, :mod:`client.ahead`) the site works from a round's first
stage on, so that stage and share-keys are hidden behind the work. :func:`secure_rounds`
checks the pricing on real rounds: a federation of three sites on this machine, the sites'
``work-ahead`` on and then off, each round's time less its slowest site's work.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol.wire import STAGE_MESSAGE_TYPE, MessageType, Metric

__all__ = ["HANDLER_METRICS", "REAL_SETTINGS", "SECURE_ROUND_STAGES", "SITE_LOOPS",
           "TRAIN_EVALUATE", "messages_per_round", "round_overheads", "run_bench",
           "run_worker_bench", "secure_round_cost", "secure_rounds", "site_alone_work"]

#: the bench's label of a train message that also evaluates the adapter it carries
#: (``eval-in-train``; on the wire a ``train`` message with ``evaluate-received``)
TRAIN_EVALUATE = "train+evaluate"

#: per message kind, the reply's timing metrics whose sum is the work inside the message
HANDLER_METRICS: dict[str, tuple[str, ...]] = {
    MessageType.HELLO: (),
    MessageType.EVALUATE: (Metric.TIME_EVAL,),
    MessageType.TRAIN: (Metric.TIME_SETUP, Metric.TIME_TRAIN),
    TRAIN_EVALUATE: (Metric.TIME_EVAL, Metric.TIME_SETUP, Metric.TIME_TRAIN),
}

_BENCH_APP = '''
"""Bench ServerApp: time single messages of each kind to one site."""
import json
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import ServerApp

from protocol.adapter import adapter_shapes, initial_adapter_state, lora_config
from protocol.config import RunConfig
from protocol.instructions import RoundInstructions
from protocol.messages import state_to_record
from protocol.wire import Field, Key, MessageType, Status
from protocol.model_ref import resolve_model
from simulations.bench_deploy import HANDLER_METRICS, TRAIN_EVALUATE
from server.app import quick_replies
from server.rounds import exchange

app = ServerApp()


@app.main()
def main(grid, context):
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    repeats, out = int(cfg.extra["bench-repeats"]), str(cfg.extra["bench-out"])
    quick_replies()  # as the coordinator's ServerApp does
    deadline = time.monotonic() + cfg.round_timeout
    while not list(grid.get_node_ids()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no site connected within {cfg.round_timeout:.0f} s")
        time.sleep(0.5)
    node = sorted(grid.get_node_ids())[0]
    ref = resolve_model(cfg.model)
    lcfg = lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=cfg.target_modules, base_model=ref)
    state = initial_adapter_state(adapter_shapes(ref, lcfg), seed=0)

    FOLDED = 2 * repeats  # the train+evaluate messages' rounds (and their evaluations'), apart

    def instr(i, **kw):  # a fresh round number per message: a site trains each round once
        return RoundInstructions(
            round_num=i + 1, run_id="bench", aggregation=cfg.aggregation,
            local_steps=cfg.local_steps, batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate, planned_rounds=3 * repeats, dp_enabled=cfg.dp,
            noise_multiplier=cfg.dp_noise_multiplier, **kw).to_record()

    plan = [(MessageType.HELLO, lambda i: RecordDict({Key.CONFIG: ConfigRecord({})})),
            (MessageType.EVALUATE, lambda i: RecordDict({Key.ARRAYS: state_to_record(state),
                                                         Key.CONFIG: instr(i)})),
            (MessageType.TRAIN, lambda i: RecordDict({Key.ARRAYS: state_to_record(state),
                                                      Key.CONFIG: instr(i)})),
            # eval-in-train: the train message also evaluates the adapter it carries
            (TRAIN_EVALUATE, lambda i: RecordDict({Key.ARRAYS: state_to_record(state),
                                                   Key.CONFIG: instr(FOLDED + i,
                                                                     evaluate_received=True)}))]
    wire_type = {TRAIN_EVALUATE: MessageType.TRAIN}
    results = {kind: [] for kind, _ in plan}
    # one message of each kind in turn, `repeats` times: a drift of the machine's speed
    # touches every kind alike, so a round priced from them stays one moment's price
    for i in range(repeats):
        for kind, content in plan:
            rows, handler_keys = results[kind], HANDLER_METRICS[kind]
            msg = Message(content(i), dst_node_id=node, message_type=wire_type.get(kind, kind),
                          group_id=str(i))
            t0 = time.perf_counter()
            # the coordinator's own exchange (its `poll-interval`), as in a round
            replies = exchange(grid, [msg], timeout=cfg.round_timeout, poll=cfg.poll_interval)
            rtt = time.perf_counter() - t0
            if not replies or replies[0].has_error():
                err = replies[0].error.reason if replies else Status.TIMEOUT
                raise RuntimeError(f"{kind}: {err}")
            answer = replies[0].content  # (not `content`: that builds the next request)
            status = dict(answer[Key.CONFIG]) if Key.CONFIG in answer else {}
            if status.get(Field.STATUS) != Status.OK:
                raise RuntimeError(f"{kind}: the site answered {status}")
            metrics = dict(answer[Key.METRICS]) if Key.METRICS in answer else {}
            rows.append({"rtt": rtt, "handler": sum(float(metrics.get(k, 0.0))
                                                    for k in handler_keys),
                         **{k: float(metrics[k]) for k in handler_keys if k in metrics}})
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    time.sleep(float(cfg.extra["bench-idle"]))  # the site, connected and idle, is measured
'''


def _import_costs() -> dict[str, Any]:
    """Cold import time of the ClientApp module, and whether query stages need torch."""
    code = ("import sys, time; t=time.perf_counter(); import {mod}; "
            "print(time.perf_counter()-t, int('torch' in sys.modules), "
            "int('transformers' in sys.modules), int('peft' in sys.modules))")
    out: dict[str, Any] = {}
    for mod in ("flwr.clientapp", "client.app"):
        best = None
        for _ in range(3):
            done = subprocess.run([sys.executable, "-c", code.format(mod=mod)], capture_output=True,
                                  text=True, check=True, cwd=str(Path(__file__).parent.parent))
            sec, torch_, tf, peft = done.stdout.split()
            best = min(float(sec), best) if best is not None else float(sec)
        out[mod] = {"import_s": best, "torch": bool(int(torch_)), "transformers": bool(int(tf)),
                    "peft": bool(int(peft))}
    return out


#: the site loops compared (``site.toml`` keys): Flower's own (a fresh ``flwr-clientapp``
#: process per message, loading the model, and Flower's 3 s polling), the resident worker
#: alone, and the default (worker, the site's executor and its ``poll-interval``)
SITE_LOOPS: dict[str, dict[str, Any]] = {
    "off": {"worker": False, "executor": False, "poll-interval": 3.0},
    "worker": {"worker": True, "executor": False, "poll-interval": 3.0},
    "on": {},
}
#: the README's real-model settings (``make demo-real``), where a round is timed
REAL_SETTINGS: dict[str, Any] = {"local-steps": 2, "batch-size": 16, "max-seq-len": 64,
                                 "max-eval-examples": 32, "dp": True}


def messages_per_round(*, eval_in_train: bool = True, work_ahead: bool = True) -> dict[str, int]:
    """Messages on one site's critical path in a secure round with secure evaluation, by kind.

    Every secure sum runs every secure-aggregation stage (:data:`protocol.wire.
    STAGE_MESSAGE_TYPE`): one message per stage, the masked one returning the work; the
    others are query stages, which cost what a ``query.hello`` costs. With ``work_ahead``
    (the site's default, :mod:`client.ahead`) the work begins at advertise-keys, so that
    stage and share-keys run while the site works and are not counted (the measured rounds
    of :func:`secure_rounds` check this). With ``eval-in-train`` (the default) a round is one
    sum, whose work also evaluates the adapter it carries (:data:`TRAIN_EVALUATE`; the run's
    final adapter is evaluated once more on its own); without it, training and evaluation
    are a sum each.
    """
    queries = len(STAGE_MESSAGE_TYPE) - 1 - (2 if work_ahead else 0)
    if eval_in_train:
        return {MessageType.HELLO: queries, TRAIN_EVALUATE: 1}
    return {MessageType.HELLO: 2 * queries, MessageType.TRAIN: 1, MessageType.EVALUATE: 1}


#: seconds the connected site is left idle at the end, its processes' CPU time measured
IDLE_S = 10.0


def _idle_cpu(client: subprocess.Popen[bytes], results: Path, run_app: subprocess.Popen[str],
              *, timeout: float) -> float | None:
    """CPU share (of one core) the site's processes use while connected and idle.

    Sampled over the :data:`IDLE_S` the bench ServerApp waits after its last message: the
    cost of the site's polling (its SuperNode's pulls, its executor's claims).
    """
    import psutil

    deadline = time.monotonic() + timeout
    while not results.exists():
        if run_app.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.1)

    def cpu() -> float:
        procs = [psutil.Process(client.pid)]
        procs += procs[0].children(recursive=True)
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    time.sleep(1.0)  # the last reply's handling is over
    t0, c0 = time.monotonic(), cpu()
    time.sleep(IDLE_S - 2.0)
    return (cpu() - c0) / (time.monotonic() - t0)


def secure_round_cost(messages: Mapping[str, Mapping[str, float]],
                      counts: Mapping[str, int]) -> tuple[float, float, float]:
    """Return one round's fixed overhead, training + evaluation time, and overhead share.

    ``messages`` holds per kind the medians :func:`run_bench` measures; ``counts`` the
    messages per round (:func:`messages_per_round`). A query stage costs what a
    ``query.hello`` costs, all of it overhead; a train or evaluate message's overhead is its
    round trip less the training or evaluation in it (a model load counts as overhead).
    """
    overhead = sum(n * (messages[k]["rtt_median_s"] if k == MessageType.HELLO
                        else messages[k]["overhead_median_s"]) for k, n in counts.items())
    compute = sum(n * messages[k]["handler_median_s"] for k, n in counts.items()
                  if k != MessageType.HELLO)
    return overhead, compute, overhead / (overhead + compute) if overhead + compute else 0.0


def run_bench(*, repeats: int = 3, settings: Mapping[str, Any] | None = None,
              json_path: str | None = None, timeout: float = 900.0, model: str = "embedded",
              loop: str = "on", keep: str | None = None, poll: float | None = None,
              ) -> dict[str, Any]:
    """Run the deployment bench with one site loop (:data:`SITE_LOOPS`); print, return figures.

    ``poll`` sets ``poll-interval`` at the coordinator and, for the ``on`` loop, at the site.
    """
    from client.deploy_config import load_site_config
    from protocol.model_ref import bundled_sites_dir, resolve_model
    from protocol.procs import find_bin, free_port, kill_tree, toml_value
    from protocol.site_log import EVALUATE, TRAIN, read_site_rows
    from server import deploy
    from server.deploy_config import load_server_config
    from server.deploy_samples import server_toml, site_toml
    from server.devkeys import make_keys
    from server.fab import stage_app

    settings = dict(REAL_SETTINGS if settings is None else settings)
    with tempfile.TemporaryDirectory(prefix="confide-bench-") as tmp:
        work = Path(tmp)
        ks = make_keys(work / "keys", hosts=["127.0.0.1"], sites=["bank"])
        fleet, control = free_port(), free_port()
        out_json = work / "bench.json"
        site_loop = {**SITE_LOOPS[loop], **({"poll-interval": poll} if poll and loop == "on"
                                            else {})}
        run = {"num-server-rounds": 1, "min-sites": 1, **settings, "secagg": False,
               **({"poll-interval": poll} if poll else {}),
               "allow-no-privacy": True, "round-timeout": 300.0,
               "model": model if model == "embedded" else resolve_model(model)}
        (ks.root / "server.toml").write_text(server_toml(
            sites=["bank"], fleet_port=fleet, control_port=control, metrics_port=0,
            out_dir=str(work / "run"), run=run))
        site_text = site_toml(name="bank", data_path=str(bundled_sites_dir() / "bank"),
                              superlink=f"127.0.0.1:{fleet}", extra=site_loop)
        # a plain bench (no secure aggregation): without its own enrolment list the site
        # answers plain train and evaluate messages instead of declining them
        site_text = "\n".join(line for line in site_text.splitlines()
                              if not line.startswith("enrolment ="))
        (ks.site_dirs["bank"] / "site.toml").write_text(site_text + "\n")
        cfg = load_server_config(ks.root / "server.toml")
        site_privacy = dict(load_site_config(ks.site_dirs["bank"] / "site.toml").privacy)
        rc = cfg.run_config()
        defaults = {**rc.to_mapping(), "bench-repeats": repeats, "bench-out": str(out_json),
                    "bench-idle": IDLE_S}
        app = stage_app(work / "app", defaults)
        (app / "confide_bench_app.py").write_text(_BENCH_APP, encoding="utf-8")
        pyproject = (app / "pyproject.toml").read_text()
        (app / "pyproject.toml").write_text(pyproject.replace(
            'serverapp = "server.app:app"', 'serverapp = "confide_bench_app:app"'))
        home = work / "flwr-home"
        home.mkdir()
        token = uuid.uuid4().hex
        env = deploy._env(home, token)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "confide"\n\n[superlink.confide]\n'
            f'address = "127.0.0.1:{control}"\n'
            f'root-certificates = {toml_value(str(cfg.ca_cert))}\n', encoding="utf-8")
        t_start = time.perf_counter()
        with deploy._superlink(cfg, work, env, token):
            deploy._register_sites(cfg, env)
            client_log = (work / "client.log").open("wb")
            client = subprocess.Popen(
                [sys.executable, "-m", "simulations.cli", "client", "--config",
                 str(ks.site_dirs["bank"] / "site.toml")], stdout=client_log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                cwd=str(Path(__file__).resolve().parent.parent))
            try:
                run_app = subprocess.Popen(
                    [find_bin("flwr"), "run", str(app), "confide", "--stream"], env=env,
                    cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                idle = _idle_cpu(client, out_json, run_app, timeout=timeout)
                stdout = run_app.communicate(timeout=timeout)[0]
            finally:
                kill_tree(client, token)
                client_log.close()
            if not out_json.exists():
                raise RuntimeError("the bench run wrote no results:\n" + stdout[-3000:]
                                   + (work / "client.log").read_text(errors="replace")[-3000:])
        total = time.perf_counter() - t_start
        if keep:  # the site's and the SuperLink's logs, the site's state, for a look after
            shutil.copytree(work, Path(keep) / loop, dirs_exist_ok=True, symlinks=True)
        raw = json.loads(out_json.read_text())
        from client.local_round import MODEL_LOAD

        state = ks.site_dirs["bank"] / "state"
        logged = {row: [(int(r["round"]), float(r.get(MODEL_LOAD, 0.0)))
                        for r in read_site_rows(state, kind=row)] for row in (TRAIN, EVALUATE)}
        # the plain messages' rounds are 1..repeats; the folded ones train 2 repeats + 1..
        # and file the evaluation they carry one round earlier
        def load(row: str, folded: bool) -> list[float]:
            return [s for r, s in logged[row] if (r >= 2 * repeats) == folded]

        loads = {MessageType.TRAIN: load(TRAIN, False),
                 MessageType.EVALUATE: load(EVALUATE, False),
                 TRAIN_EVALUATE: [a + b for a, b in zip(load(TRAIN, True), load(EVALUATE, True),
                                                        strict=False)]}
    report: dict[str, Any] = {"repeats": repeats, "settings": settings, "model": model,
                              "loop": loop, "site_toml": site_loop, "wall_s": total,
                              "idle_cpu_share": idle, "site_privacy": site_privacy,
                              "messages": {}, "model_load_s": loads,
                              "imports": _import_costs()}
    print(f"per-message cost in deployment: 1 site, TLS + SuperNode auth, model {model}, "
          f"site loop {loop} {site_loop or '(defaults)'}, {repeats} messages per "
          f"kind, {settings}")
    print(f"{'message':<14}{'round trip s':>14}{'computing s':>14}{'fixed overhead s':>18}")
    for kind, rows in raw.items():
        # a model load inside a handler is fixed overhead too, not training or evaluation
        for row, load in zip(rows, loads.get(kind, []), strict=False):
            row["model_load"] = load
        rtt = statistics.median(r["rtt"] for r in rows)
        handler = statistics.median(r["handler"] - r.get("model_load", 0.0) for r in rows)
        overhead = statistics.median(r["rtt"] - r["handler"] + r.get("model_load", 0.0)
                                     for r in rows)
        report["messages"][kind] = {"rtt_median_s": rtt, "handler_median_s": handler,
                                    "overhead_median_s": overhead, "rows": rows}
        print(f"{kind:<14}{rtt:>14.2f}{handler:>14.2f}{overhead:>18.2f}")
    for eval_in_train, ahead, suffix in ((True, True, ""), (True, False, "_no_work_ahead"),
                                         (False, True, "_separate_eval")):
        counts = messages_per_round(eval_in_train=eval_in_train, work_ahead=ahead)
        overhead, compute, share = secure_round_cost(report["messages"], counts)
        report.update({f"secagg_round_fixed_overhead_s{suffix}": overhead,
                       f"secagg_round_handler_s{suffix}": compute,
                       f"secagg_round_overhead_share{suffix}": share,
                       f"messages_per_round{suffix}": counts})
        print(f"one secure round with secure evaluation, per site, eval-in-train "
              f"{str(eval_in_train).lower()}, work-ahead {str(ahead).lower()}: "
              + " + ".join(f"{n} {k}" for k, n in counts.items())
              + f" messages; fixed overhead {overhead:.1f} s (model loads included), training "
              f"and evaluation {compute:.1f} s: overhead {share:.1%} of the round")
    if idle is not None:
        print(f"the site's processes while connected and idle: {idle:.1%} of one core")
    for kind, xs in loads.items():
        print(f"model load per {kind} message (the site's log): "
              + ", ".join(f"{x:.2f} s" for x in xs))
    for mod, info in report["imports"].items():
        print(f"import {mod}: {info['import_s']:.2f} s (torch loaded: {info['torch']}, "
              f"transformers: {info['transformers']}, peft: {info['peft']})")
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


_SITE_ALONE = '''
"""The site's own work per train+evaluate message, with nothing else on the machine."""
import json, sys, tempfile
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from client.app import app
from protocol.adapter import adapter_shapes, initial_adapter_state, lora_config
from protocol.config import RunConfig
from protocol.instructions import RoundInstructions
from protocol.messages import state_to_record
from protocol.model_ref import resolve_model
from protocol.wire import Field, Key, MessageType, Status
from simulations.bench_deploy import HANDLER_METRICS, TRAIN_EVALUATE

settings, repeats, policy = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
cfg = RunConfig.from_mapping({**settings, "secagg": False, "allow-no-privacy": True,
                              "sites-state-dir": tempfile.mkdtemp()}, allow_extra=True)
# the bench site's data (bank, the first bundled partition) and privacy policy
ctx = Context(run_id=1, node_id=7, state=RecordDict(), run_config=cfg.to_mapping(),
              node_config={"partition-id": 0, "num-partitions": 3,
                           **{f"dp-{k}": v for k, v in policy.items()}})
ref = resolve_model(cfg.model)
lcfg = lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                   target_modules=cfg.target_modules, base_model=ref)
arrays = state_to_record(initial_adapter_state(adapter_shapes(ref, lcfg), seed=0))
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
out = []
for i in range(repeats + 1):  # the first loads the model: not counted
    instr = RoundInstructions.for_round(cfg.replace(num_server_rounds=repeats + 2),
                                        round_num=i + 1, run_id="alone").evaluating_received()
    reply = app(Message(RecordDict({Key.ARRAYS: arrays, Key.CONFIG: instr.to_record()}),
                        dst_node_id=7, message_type=MessageType.TRAIN, group_id=str(i)), ctx)
    m = dict(reply.content[Key.METRICS])
    if dict(reply.content[Key.CONFIG]).get(Field.STATUS) != Status.OK:
        raise SystemExit(f"the site answered {dict(reply.content[Key.CONFIG])}")
    out.append(sum(float(m.get(k, 0.0)) for k in HANDLER_METRICS[TRAIN_EVALUATE]))
print("ALONE", json.dumps(out[1:]))
'''


def site_alone_work(*, repeats: int, settings: Mapping[str, Any], model: str,
                    policy: Mapping[str, Any], timeout: float = 900.0) -> list[float]:
    """Return the training and evaluation time of ``repeats`` ``train+evaluate`` messages.

    They are handled by the site's ClientApp in a process of its own, with no coordinator
    on the machine (after one that loads the model).

    The deployment bench runs the coordinator's SuperLink and ServerApp on the site's cores;
    this is the site's own work that a round's fixed overhead is to be weighed against.
    ``policy`` is the site's ``[privacy]`` table (its DP policy).
    """
    import os

    from protocol.model_ref import resolve_model

    run = {**settings, "model": model if model == "embedded" else resolve_model(model)}
    proc = subprocess.run(
        [sys.executable, "-c", _SITE_ALONE, json.dumps(run), str(repeats),
         json.dumps(dict(policy))],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    lines = [x for x in proc.stdout.splitlines() if x.startswith("ALONE ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError("the site-alone run failed:\n" + proc.stderr[-3000:])
    return [float(x) for x in json.loads(lines[-1][len("ALONE "):])]


def run_worker_bench(*, repeats: int = 3, settings: Mapping[str, Any] | None = None,
                     model: str = "embedded", json_path: str | None = None,
                     loops: tuple[str, ...] = ("off", "on"), keep: str | None = None,
                     poll: float | None = None, secure_round_count: int = 0,
                     ) -> dict[str, Any]:
    """Run :func:`run_bench` for each site loop in ``loops``; print them side by side.

    With ``secure_round_count`` it then measures that many real secure rounds
    (:func:`secure_rounds`), with the sites' ``work-ahead`` on and off.
    """
    runs = {loop: run_bench(repeats=repeats, settings=settings, model=model, loop=loop,
                            keep=keep, poll=poll)
            for loop in loops}
    first = runs[loops[0]]
    print()
    print(f"per-message fixed overhead (round trip - training or evaluation time), median of "
          f"{repeats}, "
          f"model {model}, {first['settings']}")
    head = "".join(f"{'loop ' + k + ' s':>14}" for k in runs)
    print(f"{'message':<26}{head}")
    for kind in first["messages"]:
        cells = "".join(f"{r['messages'][kind]['overhead_median_s']:>14.2f}"
                        for r in runs.values())
        print(f"{kind:<26}{cells}")
    rows = (("round: fixed overhead s", "secagg_round_fixed_overhead_s", ".1f"),
            ("round: computing s", "secagg_round_handler_s", ".1f"),
            ("round: overhead share", "secagg_round_overhead_share", ".1%"),
            ("  separate eval: overhead s", "secagg_round_fixed_overhead_s_separate_eval",
             ".1f"),
            ("  separate eval: share", "secagg_round_overhead_share_separate_eval", ".1%"),
            ("  no work-ahead: overhead s", "secagg_round_fixed_overhead_s_no_work_ahead",
             ".1f"),
            ("  no work-ahead: share", "secagg_round_overhead_share_no_work_ahead", ".1%"),
            ("idle site, CPU of a core", "idle_cpu_share", ".1%"))
    for label, key, fmt in rows:
        print(f"{label:<26}" + "".join(
            f"{format(r[key], fmt) if r[key] is not None else '-':>14}" for r in runs.values()))
    alone = site_alone_work(repeats=repeats, settings=first["settings"], model=model,
                            policy=first["site_privacy"])
    work = statistics.median(alone)
    for r in runs.values():
        fixed = r["secagg_round_fixed_overhead_s"]
        r["site_alone_work_s"] = alone
        r["secagg_round_overhead_share_site_alone"] = fixed / (fixed + work)
    print(f"{'site alone: work s':<26}" + "".join(f"{work:>14.1f}" for _ in runs))
    print(f"{'site alone: share':<26}" + "".join(
        f"{r['secagg_round_overhead_share_site_alone']:>14.1%}" for r in runs.values()))
    for k, r in runs.items():
        print(f"loop {k}: model load per train message "
              + ", ".join(f"{x:.2f} s" for x in r["model_load_s"][MessageType.TRAIN]))
    kept = ("secagg_round_fixed_overhead_s", "secagg_round_handler_s",
            "secagg_round_overhead_share", "secagg_round_fixed_overhead_s_separate_eval",
            "secagg_round_handler_s_separate_eval", "secagg_round_overhead_share_separate_eval",
            "secagg_round_fixed_overhead_s_no_work_ahead",
            "secagg_round_overhead_share_no_work_ahead",
            "idle_cpu_share", "model_load_s", "wall_s", "site_toml", "site_alone_work_s",
            "secagg_round_overhead_share_site_alone")
    measured = {}
    if secure_round_count:
        for ahead in (True, False):
            measured["work_ahead" if ahead else "no_work_ahead"] = secure_rounds(
                rounds=secure_round_count, settings=first["settings"], model=model,
                work_ahead=ahead, keep=keep)
        _print_secure_rounds(measured)
    out = {"model": model, "repeats": repeats, "settings": first["settings"],
           "messages_per_round": first["messages_per_round"],
           "messages_per_round_separate_eval": first["messages_per_round_separate_eval"],
           "loops": {k: {"messages": {kind: {m: v for m, v in row.items() if m != "rows"}
                                      for kind, row in r["messages"].items()},
                         **{m: r[m] for m in kept}}
                     for k, r in runs.items()},
           "secure_rounds": measured,
           "runs": runs}
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out


#: the coordinator's stages of one secure training round (:mod:`server.secure`), timed by
#: its stage clock into each metrics row's ``stage_time_s``
SECURE_ROUND_STAGES = ("secagg: keys", "secagg: shares", "train (masked)",
                       "secagg: consistency", "secagg: charge", "secagg: unmask",
                       "secagg: release")


def secure_rounds(*, sites: int = 3, rounds: int = 3, settings: Mapping[str, Any] | None = None,
                  model: str = "embedded", work_ahead: bool = True, timeout: float = 1800.0,
                  keep: str | None = None) -> dict[str, Any]:
    """Run a real federation on 127.0.0.1 and measure each secure round's fixed overhead.

    ``confide server`` and ``sites`` ``confide client`` processes (TLS, SuperNode auth, DP,
    secure aggregation, ``eval-in-train``; the bundled sites' data) run ``rounds`` rounds.
    Per round from round 2 on (round 1 loads the model): the round's time (the coordinator's
    secure-round stages, :data:`SECURE_ROUND_STAGES`), the slowest site's work in it (from
    each site's own log: setup and training of round r, the evaluation it carried, filed
    under r - 1), and their difference, the fixed overhead no site's work hides. All the
    sites share this machine's cores, which slows their work. ``work_ahead`` is the sites'
    ``work-ahead`` (false: the work runs at the masked-input stage). Each site's torch gets
    an equal share of the cores (``OMP_NUM_THREADS``: cores // sites, at least 1), so the
    sites do not oversubscribe them.
    """
    import os

    from protocol.model_ref import bundled_sites_dir, resolve_model
    from protocol.procs import flower_env, free_port, kill_tree
    from protocol.run_folder import RunFolder
    from protocol.site_log import EVALUATE, TRAIN, read_site_rows
    from server.deploy_samples import server_toml, site_toml
    from server.devkeys import make_keys

    names = [p.name for p in sorted(bundled_sites_dir().iterdir()) if p.is_dir()][:sites]
    if len(names) < sites:
        raise ValueError(f"`sites` {sites}: only {len(names)} bundled sites")
    settings = dict(REAL_SETTINGS if settings is None else settings)
    run = {"num-server-rounds": rounds, "min-sites": sites, **settings, "secagg": True,
           "round-timeout": 600.0,
           "model": model if model == "embedded" else resolve_model(model)}
    repo = Path(__file__).resolve().parent.parent
    token = uuid.uuid4().hex
    threads = max(1, (os.cpu_count() or 1) // sites)
    env = {**flower_env(token), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    site_env = {**env, "OMP_NUM_THREADS": str(threads)}
    cli = [sys.executable, "-m", "simulations.cli"]
    with tempfile.TemporaryDirectory(prefix="confide-bench-rounds-") as tmp:
        work = Path(tmp)
        ks = make_keys(work / "keys", hosts=["127.0.0.1"], sites=names)
        fleet = free_port()
        server_cfg = ks.root / "server.toml"
        server_cfg.write_text(server_toml(sites=names, fleet_port=fleet, control_port=free_port(),
                                          metrics_port=0, out_dir=str(work / "run"), run=run))
        for name in names:
            (ks.site_dirs[name] / "site.toml").write_text(site_toml(
                name=name, data_path=str(bundled_sites_dir() / name),
                superlink=f"127.0.0.1:{fleet}", extra={"work-ahead": work_ahead}))
        procs: list[subprocess.Popen[bytes]] = []
        logs = [(work / f"{n}.log").open("wb") for n in ("server", *names)]
        t0 = time.perf_counter()
        try:
            for args, log in zip([["server", "--config", str(server_cfg)]]
                                 + [["client", "--config", str(ks.site_dirs[n] / "site.toml")]
                                    for n in names], logs, strict=True):
                procs.append(subprocess.Popen(
                    cli + args, stdout=log, stderr=subprocess.STDOUT, cwd=str(repo),
                    env=env if args[0] == "server" else site_env, start_new_session=True))
            rc = procs[0].wait(timeout=timeout)
        finally:
            for p in procs:
                kill_tree(p, token)
            for log in logs:
                log.close()
        wall = time.perf_counter() - t0
        if keep:
            shutil.copytree(work, Path(keep) / f"rounds-ahead-{str(work_ahead).lower()}",
                            dirs_exist_ok=True, symlinks=True)
        if rc != 0:
            raise RuntimeError(f"the bench federation ended with {rc}:\n"
                               + (work / "server.log").read_text(errors="replace")[-3000:])
        rows = RunFolder(work / "run").read_metrics()
        site_rows = {n: {kind: {int(r["round"]): r for r in read_site_rows(
            ks.site_dirs[n] / "state", kind=kind)} for kind in (TRAIN, EVALUATE)} for n in names}
    per_round = round_overheads(rows, site_rows)
    if not per_round:
        raise RuntimeError("the bench federation recorded no secure round after round 1")
    return {"sites": names, "rounds": rounds, "model": model, "settings": settings,
            "work_ahead": work_ahead, "threads_per_site": threads, "wall_s": wall,
            "per_round": per_round,
            "fixed_overhead_median_s": statistics.median(p["fixed_overhead_s"]
                                                         for p in per_round),
            "round_median_s": statistics.median(p["round_s"] for p in per_round),
            "overhead_share_median": statistics.median(p["overhead_share"] for p in per_round)}


def round_overheads(rows: Sequence[Any], site_rows: Mapping[str, Mapping[str, Mapping[int, Any]]],
                    ) -> list[dict[str, Any]]:
    """Per secure round from round 2 on: its time, the slowest site's work, the difference.

    ``rows`` are the run's metrics rows (:class:`protocol.run_rows.MetricsRow`; the round's
    time is the sum of its :data:`SECURE_ROUND_STAGES`); ``site_rows`` per site and kind
    (``train``, ``evaluate``) its own log's rows by round. A site's work in round r is its
    setup and training of round r and the evaluation it carried (filed under r - 1).
    """
    from protocol.site_log import EVALUATE, TRAIN

    out = []
    for row in rows:
        r, times = row.round, row.stage_time_s or {}
        if r < 2 or not set(SECURE_ROUND_STAGES) <= set(times):
            continue
        round_s = sum(times[s] for s in SECURE_ROUND_STAGES)
        work_s = {n: float(s[TRAIN][r].get(Metric.TIME_SETUP, 0.0))
                  + float(s[TRAIN][r].get(Metric.TIME_TRAIN, 0.0))
                  + float(s[EVALUATE].get(r - 1, {}).get(Metric.TIME_EVAL, 0.0))
                  for n, s in site_rows.items() if r in s[TRAIN]}
        if not work_s:
            continue
        slowest = max(work_s.values())
        out.append({"round": r, "round_s": round_s, "work_s": work_s, "slowest_work_s": slowest,
                    "fixed_overhead_s": round_s - slowest,
                    "overhead_share": (round_s - slowest) / round_s if round_s else 0.0,
                    "stage_time_s": {s: times[s] for s in SECURE_ROUND_STAGES}})
    return out


def _print_secure_rounds(measured: Mapping[str, Mapping[str, Any]]) -> None:
    first = next(iter(measured.values()))
    rounds = [p["round"] for p in first["per_round"]]
    print()
    print(f"real secure rounds: {len(first['sites'])} sites on this machine's cores, model "
          f"{first['model']}, rounds {rounds[0]}-{rounds[-1]} (round 1 loads the model), "
          f"median per round")
    print(f"{'':<26}" + "".join(f"{k.replace('_', '-'):>16}" for k in measured))
    for label, key, fmt in (("round s", "round_median_s", ".1f"),
                            ("fixed overhead s", "fixed_overhead_median_s", ".2f"),
                            ("overhead share", "overhead_share_median", ".1%")):
        print(f"{label:<26}" + "".join(f"{format(m[key], fmt):>16}" for m in measured.values()))
    for k, m in measured.items():
        print(f"{k.replace('_', '-')}: per round (round s / slowest site's work s / overhead s) "
              + ", ".join(f"{p['round_s']:.1f}/{p['slowest_work_s']:.1f}/"
                          f"{p['fixed_overhead_s']:.2f}" for p in m["per_round"]))
