"""The site's SuperNode process: Flower's ``flower-supernode``, with the site's own task loop.

``confide client`` starts its SuperNode through :func:`main` instead of the
``flower-supernode`` command. It is Flower's SuperNode (the same Fleet API connection to the
coordinator, TLS, SuperNode authentication, node state and Runtime API), with two changes a
site makes for itself:

* **Polling.** Flower 1.39's SuperNode sleeps 3 s whenever a pull finds no message, and
  0.5 s between checks for the ClientApp's reply. A secure round is five messages per site
  (ten with a separate secure evaluation), each sent only when every site has answered the
  one before, so those sleeps alone added ~15 s per round per site. Here every such sleep
  is capped at the site's ``poll-interval`` (``site.toml``; 3.0 gives Flower's behaviour
  back), the executor and
  the loop wake each other when a task or a reply is stored, and a message's arrays not
  stored yet are tried again after 20 ms, not 1 s (:mod:`protocol.object_pulls`). Only the
  length of the waits changes, nothing that is sent.
* **Executor** (``--executor``; the default with the resident worker). Flower's
  ``subprocess`` isolation starts ``flower-superexec``, which starts one ``flwr-clientapp``
  process per message (interpreter start and imports, ~2 s each). Here the SuperNode runs
  in ``process`` isolation and a thread of this process claims each ClientApp task from the
  SuperNode's Runtime API and runs the site's installed ClientApp in-process
  (:func:`run_task`; with the worker, that app relays to it). Claiming a task needs a
  secret this process draws at start and hands the SuperNode in a 0600 file (Flower's
  SuperExec authentication): another local process cannot take the site's messages, which
  Flower's ``subprocess`` isolation leaves open to any process on the machine.

Both patch Flower 1.39 internals. On any other Flower version, or when an internal
has moved, the SuperNode runs unchanged (Flower's polling, ``subprocess`` isolation with the
site's ``flwr-clientapp``) and the log says why.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
import stat
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message

from protocol.object_pulls import (
    BACKOFF_CAP_S,
    FIRST_RETRY_S,
    quicken_object_pulls,
    unsupported_flower,
)

__all__ = ["SECRET_NAME", "Wakeups", "main", "patch_polling", "run_executor", "run_task"]

logger = logging.getLogger("client.supernode_process")  # also when run as __main__

_CAPPED = "_confide_capped"
#: the file in the worker's folder that hands the SuperNode this start's executor secret
SECRET_NAME = "superexec.secret"


@dataclass
class Wakeups:
    """What the executor and the SuperNode's loop, in one process, tell each other at once."""

    #: the SuperNode stored a message and its task: the executor claims it now
    task: threading.Event = field(default_factory=threading.Event)
    #: the executor stored a reply: the SuperNode's loop sends it now
    reply: threading.Event = field(default_factory=threading.Event)


def patch_polling(poll: float, wake: Wakeups | None = None) -> str | None:
    """Cap every wait of Flower's SuperNode loop at ``poll`` s; the reason when it cannot.

    Flower 1.39's ``start_client_internal`` module sleeps through its module global ``time``
    (3 s after an empty pull, 0.5 s per check for a reply); that global is replaced by a
    module whose ``sleep`` waits ``min(seconds, poll)``, or less when ``wake.reply`` is set;
    its ``pull_objects`` (a message's arrays, from the coordinator) retries sooner than 1 s
    (:func:`protocol.object_pulls.quicken_object_pulls`); and with ``wake``, each
    message it stores sets ``wake.task``.
    """
    why = unsupported_flower()
    if why:
        return why
    from flwr.supernode import start_client_internal as sci

    current = getattr(sci, "time", None)
    if current is not time and not getattr(current, _CAPPED, False):  # (or patched before)
        return "flwr.supernode.start_client_internal no longer sleeps through `time`"
    store = getattr(sci, "_pull_and_store_message", None)
    store = getattr(store, "__wrapped__", store)  # Flower's own under an earlier patch
    if store is None:
        return "flwr.supernode.start_client_internal._pull_and_store_message is gone"
    why = quicken_object_pulls(sci.__name__)
    if why:
        return why
    capped = types.ModuleType("time")
    capped.__dict__.update(time.__dict__)
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if wake is None:
            real_sleep(min(float(seconds), poll))
        else:
            wake.reply.wait(min(float(seconds), poll))
            wake.reply.clear()

    capped.sleep = sleep  # type: ignore[attr-defined]
    setattr(capped, _CAPPED, True)
    sci.time = capped  # type: ignore[attr-defined]

    @functools.wraps(store)
    def pull_and_store(*args: Any, **kwargs: Any) -> Any:
        run_id = store(*args, **kwargs)
        if run_id is not None and wake is not None:
            wake.task.set()
        return run_id

    sci._pull_and_store_message = pull_and_store
    return None


def _runtime_client(address: str, interceptors: list[Any]) -> Any:
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=interceptors, retry_invoker=make_simple_http_retry_invoker())


def _pull_task_input(client: Any, poll: float) -> tuple[Any, Any, Any, Any]:
    """Flower's ``pull_task_input``, retrying an object not stored yet every ``poll`` s.

    The SuperNode offers a task as soon as it has the message's header, while it still pulls
    the message's arrays from the coordinator; Flower's own pull then backs off for 1 s, then
    2 s (its process starts later, and seldom meets this). Here the retries start at
    :data:`~protocol.object_pulls.FIRST_RETRY_S` and double to at most
    :data:`~protocol.object_pulls.BACKOFF_CAP_S`.
    """
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id = res.task_id, res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = (context_from_proto(res.context), run_from_proto(res.run),
                         fab_from_proto(res.fab))
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("no message for this task from the SuperNode's Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                  context.run_id),
        return_type=Message, initial_backoff=FIRST_RETRY_S, backoff_cap=BACKOFF_CAP_S)
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab


def run_task(address: str, token: str, load_app: Callable[[str, str, str], Any],
             poll: float = 0.1, wake: Wakeups | None = None) -> str:
    """Run one claimed ClientApp task in this process; return its sub-status.

    The same exchange as Flower's ``flwr-clientapp --token`` (pull the task's message and
    context, run the ClientApp, push the reply and the context back, heartbeats meanwhile),
    with the app from ``load_app`` (the site's installed one) and no FAB unpacked. An
    exception in the app becomes an error reply, as in Flower; it never ends the loop.
    """
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = _runtime_client(address, [RuntimeVersionHttpInterceptor(
        component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)])
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = reply = context = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        heartbeat.start()
        message, context, run, fab = _pull_task_input(client, poll)
        app = load_app(run.fab_id, run.fab_version, fab.hash_str)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # noqa: BLE001 - the reply carries it, as Flower's process does
        logger.exception("the site's ClientApp raised on a task")
        details = f"{type(exc)}:<'{exc}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                            reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
                if wake is not None:
                    wake.reply.set()
        except Exception:  # noqa: BLE001 - the SuperNode's task expiry answers for it
            logger.exception("could not push the reply of a task")
            status = SubStatus.FAILED
        try:
            push_task_output(client=client, context=context, sub_status=status,
                             details=details)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
    return str(status)


def run_executor(address: str, secret: bytes, poll: float,
                 load_app: Callable[[str, str, str], Any],
                 stop: threading.Event | None = None, wake: Wakeups | None = None) -> None:
    """Claim the SuperNode's ClientApp tasks one at a time and run each (until ``stop``).

    Between two claims it waits ``poll`` s, or until ``wake.task`` says a task is there.
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.superexec.run_superexec import _SUPEREXEC_AUTH_METHODS

    client = _runtime_client(address, [
        RuntimeVersionHttpInterceptor(component_name="SuperExec"),
        SuperExecAuthHttpInterceptor(master_secret=secret,
                                     protected_methods=_SUPEREXEC_AUTH_METHODS)])
    stop = stop or threading.Event()
    request = AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)])
    failing = False
    while not stop.is_set():
        try:
            res = client.AcquireTask(request)
            failing = False
        except Exception as exc:  # noqa: BLE001 - not up yet, or restarting: try again
            if not failing:
                logger.warning("site executor: the SuperNode's Runtime API at %s does not "
                               "answer (%s); retrying", address, exc)
            failing = True
            stop.wait(max(poll, 0.5))
            continue
        if res.HasField("task") and res.token:
            try:
                run_task(address, res.token, load_app, poll, wake)
            except Exception:  # noqa: BLE001 - the task expires at the SuperNode; go on
                logger.exception("site executor: a task failed outside its ClientApp")
            continue  # another task may be waiting already
        if wake is None:
            stop.wait(poll)
        else:
            wake.task.wait(poll)
            wake.task.clear()


def _executor_unsupported() -> str | None:
    why = unsupported_flower()
    if why:
        return why
    try:
        from flwr.supercore.superexec import run_superexec
        from flwr.supernode.runtime import run_clientapp
    except ImportError as exc:
        return f"a Flower module moved ({exc})"
    for mod, name in ((run_clientapp, "push_message"),
                      (run_clientapp, "push_task_output"),
                      (run_superexec, "_SUPEREXEC_AUTH_METHODS")):
        if not hasattr(mod, name):
            return f"{mod.__name__}.{name} is gone"
    return None


def _write_secret(folder: Path) -> tuple[Path, bytes]:
    """Draw this start's executor secret and write it, mode 0600, in ``folder`` (0700)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, stat.S_IRWXU)
    secret = secrets.token_bytes(32)
    path = folder / SECRET_NAME
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
    os.replace(tmp, path)
    return path, secret


def _runtime_address(flower_args: list[str]) -> str:
    def value(flag: str, default: str) -> str:
        return flower_args[flower_args.index(flag) + 1] if flag in flower_args else default

    return f"{value('--host', '127.0.0.1')}:{value('--port', '9094')}"


def main(argv: list[str] | None = None) -> None:
    """``python -m client.supernode_process [--poll S] [--executor DIR] -- FLOWER ARGS``."""
    args = sys.argv[1:] if argv is None else argv
    ours, flower_args = (args[:args.index("--")], args[args.index("--") + 1:]) \
        if "--" in args else ([], args)
    ap = argparse.ArgumentParser(prog="confide-supernode")
    ap.add_argument("--poll", type=float, default=3.0)
    ap.add_argument("--executor", default="", help="folder for the executor's secret")
    opts = ap.parse_args(ours)
    from protocol.console import log_events

    log_events(sys.stderr, ("client", "privacy"), replace=False)  # the site's own events
    wake = Wakeups() if opts.executor else None
    why = patch_polling(opts.poll, wake)
    if why:
        logger.warning("site SuperNode: Flower's own polling (3 s when idle): %s", why)
    if opts.executor:
        why = _executor_unsupported()
        if why:
            logger.warning("site SuperNode: one flwr-clientapp process per message "
                           "(subprocess isolation): %s", why)
        else:
            from client.clientapp_process import load_site_app

            secret_file, secret = _write_secret(Path(opts.executor))
            flower_args += ["--isolation", "process",
                            "--superexec-auth-secret-file", str(secret_file)]
            threading.Thread(target=run_executor, name="confide-executor", daemon=True,
                             args=(_runtime_address(flower_args), secret, opts.poll,
                                   load_site_app, None, wake)).start()
            logger.info("site SuperNode: ClientApp tasks run in this process (the site's "
                        "executor), polled every %.2f s", opts.poll)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
