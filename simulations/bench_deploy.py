"""Per-message fixed cost in deployment (``python -m simulations.bench_round --deployment``).

In Flower's deployment engine every message a site receives runs in a fresh
``flwr-clientapp`` process: imports, and for train / evaluate the model load, are paid per
message. This bench starts a real SuperLink (TLS + SuperNode auth) and one real
``confide client`` on 127.0.0.1, submits a bench ServerApp that sends ``--repeats`` messages
of each kind to the site one at a time, and reports per kind the round trip (server send ->
reply) and the time spent inside the handler (the reply's own timing metrics); the
difference is the fixed per-message overhead (process start, imports, Flower hops).
It also reports, in this process, what importing the ClientApp costs and whether the
non-training stages (``query.hello``, the secure-aggregation queries) pull in torch.

:func:`run_worker_bench` runs it twice, with the site's resident worker off (``worker =
false`` in its ``site.toml``: every message loads torch and the model in its fresh process)
and on (the default: the per-message process only relays; :mod:`client.worker`), and prints
both side by side, with the model-load time of each train message from the site's own log.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from protocol.wire import MessageType, Metric

__all__ = ["run_bench", "run_worker_bench"]

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
from protocol.wire import Key, MessageType, Metric, Status
from protocol.model_ref import resolve_model

app = ServerApp()


@app.main()
def main(grid, context):
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    repeats, out = int(cfg.extra["bench-repeats"]), str(cfg.extra["bench-out"])
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
    instr = RoundInstructions(round_num=1, run_id="bench", aggregation=cfg.aggregation,
                              local_steps=cfg.local_steps, batch_size=cfg.batch_size,
                              learning_rate=cfg.learning_rate, planned_rounds=1,
                              dp_enabled=False, noise_multiplier=-1.0)
    plan = [(MessageType.HELLO, lambda: RecordDict({Key.CONFIG: ConfigRecord({})}), ()),
            (MessageType.EVALUATE, lambda: RecordDict({Key.ARRAYS: state_to_record(state),
                                                       Key.CONFIG: instr.to_record()}),
             (Metric.TIME_EVAL,)),
            (MessageType.TRAIN, lambda: RecordDict({Key.ARRAYS: state_to_record(state),
                                                    Key.CONFIG: instr.to_record()}),
             (Metric.TIME_SETUP, Metric.TIME_TRAIN))]
    results = {}
    for kind, content, handler_keys in plan:
        rows = []
        for i in range(repeats):
            msg = Message(content(), dst_node_id=node, message_type=kind, group_id=str(i))
            t0 = time.perf_counter()
            replies = list(grid.send_and_receive([msg], timeout=cfg.round_timeout))
            rtt = time.perf_counter() - t0
            if not replies or replies[0].has_error():
                err = replies[0].error.reason if replies else Status.TIMEOUT
                raise RuntimeError(f"{kind}: {err}")
            answer = replies[0].content  # (not `content`: that builds the next request)
            metrics = dict(answer[Key.METRICS]) if Key.METRICS in answer else {}
            rows.append({"rtt": rtt, "handler": sum(float(metrics.get(k, 0.0))
                                                    for k in handler_keys),
                         **{k: float(metrics[k]) for k in handler_keys if k in metrics}})
        results[kind] = rows
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
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


def run_bench(*, repeats: int = 3, local_steps: int = 1, json_path: str | None = None,
              timeout: float = 900.0, model: str = "embedded",
              worker: bool = True) -> dict[str, Any]:
    """Run the deployment bench; print a table and return the numbers."""
    from client.deploy_config import load_site_config
    from protocol.model_ref import bundled_sites_dir, resolve_model
    from protocol.procs import find_bin, free_port, kill_tree, toml_value
    from protocol.site_log import TRAIN, read_site_rows
    from server import deploy
    from server.deploy_config import load_server_config
    from server.deploy_samples import server_toml, site_toml
    from server.devkeys import make_keys
    from server.fab import stage_app

    with tempfile.TemporaryDirectory(prefix="confide-bench-") as tmp:
        work = Path(tmp)
        ks = make_keys(work / "keys", hosts=["127.0.0.1"], sites=["bank"])
        fleet, control = free_port(), free_port()
        out_json = work / "bench.json"
        run = {"num-server-rounds": 1, "min-sites": 1, "local-steps": local_steps,
               "batch-size": 8, "max-seq-len": 64, "max-eval-examples": 16, "dp": False,
               "secagg": False, "round-timeout": 300.0,
               "model": model if model == "embedded" else resolve_model(model)}
        (ks.root / "server.toml").write_text(server_toml(
            sites=["bank"], fleet_port=fleet, control_port=control, metrics_port=0,
            out_dir=str(work / "run"), run=run))
        site_text = site_toml(name="bank", data_path=str(bundled_sites_dir() / "bank"),
                              superlink=f"127.0.0.1:{fleet}", extra={"worker": worker})
        # a plain bench (no secure aggregation): without its own enrolment list the site
        # answers plain train and evaluate messages instead of declining them
        site_text = "\n".join(line for line in site_text.split("\n[privacy]")[0].splitlines()
                               if not line.startswith("enrolment ="))
        (ks.site_dirs["bank"] / "site.toml").write_text(site_text + "\n")
        cfg = load_server_config(ks.root / "server.toml")
        load_site_config(ks.site_dirs["bank"] / "site.toml")
        rc = cfg.run_config()
        defaults = {**rc.to_mapping(), "bench-repeats": repeats, "bench-out": str(out_json)}
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
                done = subprocess.run([find_bin("flwr"), "run", str(app), "confide", "--stream"],
                                      env=env, cwd=str(work), capture_output=True, text=True,
                                      timeout=timeout)
            finally:
                kill_tree(client, token)
                client_log.close()
            if not out_json.exists():
                raise RuntimeError("the bench run wrote no results:\n" + done.stdout[-3000:]
                                   + (work / "client.log").read_text(errors="replace")[-3000:])
        total = time.perf_counter() - t_start
        raw = json.loads(out_json.read_text())
        from client.local_round import MODEL_LOAD

        loads = [float(r.get(MODEL_LOAD, 0.0)) for r in
                 read_site_rows(ks.site_dirs["bank"] / "state", kind=TRAIN)]
    report: dict[str, Any] = {"repeats": repeats, "local_steps": local_steps, "model": model,
                              "worker": worker, "wall_s": total, "messages": {},
                              "model_load_s": loads, "imports": _import_costs()}
    print(f"per-message cost in deployment: 1 site, TLS + SuperNode auth, model {model}, "
          f"resident worker {'on' if worker else 'off'}, {repeats} messages per kind, "
          f"local-steps {local_steps}")
    print(f"{'message':<14}{'round trip s':>14}{'in handler s':>14}{'fixed overhead s':>18}")
    for kind, rows in raw.items():
        rtt = statistics.median(r["rtt"] for r in rows)
        handler = statistics.median(r["handler"] for r in rows)
        report["messages"][kind] = {"rtt_median_s": rtt, "handler_median_s": handler,
                                    "overhead_median_s": rtt - handler, "rows": rows}
        print(f"{kind:<14}{rtt:>14.2f}{handler:>14.2f}{rtt - handler:>18.2f}")
    hello = report["messages"][MessageType.HELLO]["rtt_median_s"]
    ev = report["messages"][MessageType.EVALUATE]
    tr = report["messages"][MessageType.TRAIN]
    setup = statistics.median(r.get(Metric.TIME_SETUP, 0.0) for r in tr["rows"])
    # a secure-aggregation round: hello once, then advertise, share, unmask (query stages,
    # same process cost as hello), train.secagg (train) and evaluate
    per_round = 3 * hello + tr["overhead_median_s"] + ev["overhead_median_s"] + 2 * setup
    report["secagg_round_fixed_overhead_s"] = per_round
    print(f"fixed overhead of one secure-aggregation round per site: 3 query stages x "
          f"{hello:.2f} s + train and evaluate overheads + 2 model loads x {setup:.2f} s "
          f"(training and evaluation compute excluded) = {per_round:.1f} s")
    print("model load per train message (the site's log): "
          + ", ".join(f"{x:.2f} s" for x in loads))
    for mod, info in report["imports"].items():
        print(f"import {mod}: {info['import_s']:.2f} s (torch loaded: {info['torch']}, "
              f"transformers: {info['transformers']}, peft: {info['peft']})")
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return report


def run_worker_bench(*, repeats: int = 3, local_steps: int = 1, model: str = "embedded",
                     json_path: str | None = None, modes: tuple[bool, ...] = (False, True),
                     ) -> dict[str, Any]:
    """Run :func:`run_bench` with the resident worker off, then on; print both side by side."""
    runs = {("on" if on else "off"): run_bench(repeats=repeats, local_steps=local_steps,
                                               model=model, worker=on) for on in modes}
    print()
    print(f"per-message fixed overhead (round trip - time in handler), median of {repeats}, "
          f"model {model}")
    head = "".join(f"{'worker ' + k + ' s':>16}" for k in runs)
    print(f"{'message':<14}{head}")
    for kind in runs[next(iter(runs))]["messages"]:
        cells = "".join(f"{r['messages'][kind]['overhead_median_s']:>16.2f}"
                        for r in runs.values())
        print(f"{kind:<14}{cells}")
    cells = "".join(f"{r['secagg_round_fixed_overhead_s']:>16.1f}" for r in runs.values())
    print(f"{'secagg round':<14}{cells}")
    for k, r in runs.items():
        print(f"worker {k}: model load per train message "
              + ", ".join(f"{x:.2f} s" for x in r["model_load_s"]))
    out = {"model": model, "repeats": repeats, "local_steps": local_steps,
           "worker": {k: {"messages": {kind: {m: v for m, v in row.items() if m != "rows"}
                                       for kind, row in r["messages"].items()},
                          "secagg_round_fixed_overhead_s": r["secagg_round_fixed_overhead_s"],
                          "model_load_s": r["model_load_s"], "wall_s": r["wall_s"]}
                      for k, r in runs.items()},
           "runs": runs}
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out
