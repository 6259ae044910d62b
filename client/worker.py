"""The resident site worker: the site's model, data and DP stack, loaded once per run.

In deployment Flower starts a fresh ``flwr-clientapp`` process for every message, which would
import torch, transformers, peft and opacus and load the base model again each time.
``confide client`` (:mod:`client.agent`) therefore starts this worker before the SuperNode and
restarts it when it dies (:class:`WorkerSupervisor`). The worker serves gRPC on a Unix-domain
socket (mode 0600, in a folder of mode 0700 that the site's user owns) with generic handlers,
bytes in and out; the per-message ClientApp only relays (:mod:`client.relay`). It runs the SAME
handlers :func:`client.app.build_app` registers, on the message and context rebuilt with
Flower's serde, so the base model (on CUDA when the site's device resolves to it), the
tokenised data (``client.model``, ``client.site`` caches) and the imported privacy stack stay
in memory across the messages of a run; the ledger is still written by the handler, before
its reply leaves. A secure round's local work runs in a thread of the worker from the round's
advertise-keys request on (:mod:`client.ahead`), while keys and shares are routed.

Exactly once: before it runs a request the worker writes the request's id to its journal
(``<state-dir>/worker/requests.json``, fsynced). A request the relay sends again because the
worker died under it is answered as interrupted by the restarted worker, never run twice, so
a round is never trained or charged twice; a request whose reply was lost in transit while the
worker lived gets the reply it already made.

    python -m client.worker --socket PATH --journal-dir DIR [--parent-pid PID]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from client.relay import (
    HANDLE_METHOD,
    PING_METHOD,
    REPLY_INTERRUPTED,
    REPLY_OK,
    REPLY_RAISED,
    channel_options,
    decode_request,
    encode_reply,
)
from protocol.io import atomic_write_json

if TYPE_CHECKING:
    import grpc
    from flwr.clientapp import ClientApp

__all__ = ["JOURNAL_FILE", "LOCK_FILE", "SiteWorker", "WorkerSupervisor", "main", "private_dir",
           "serve"]

logger = logging.getLogger("client.worker")  # also when run as __main__

JOURNAL_FILE = "requests.json"
#: held (flock) by the one worker of a site: another agent on the same state directory
#: waits for it instead of taking over the live worker's socket
LOCK_FILE = "worker.lock"
_JOURNAL_KEEP = 256  # request ids remembered (messages run one at a time)
_REPLIES_KEEP = 4  # replies kept for a relay that lost one in transit


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or check it: a real folder of this user, mode 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a folder (a link or file is in the worker's place)")
    if st.st_uid != os.getuid():
        raise OSError(f"{path} belongs to uid {st.st_uid}, not to this site's user "
                      f"({os.getuid()}); the worker's socket must not live there")
    os.chmod(path, 0o700)
    return path


class SiteWorker:
    """Run relayed requests one at a time on the site's ClientApp, with a request journal."""

    def __init__(self, journal_dir: Path) -> None:
        self.journal_path = private_dir(journal_dir) / JOURNAL_FILE
        self._lock = threading.Lock()
        self._app: ClientApp | None = None
        self._replies: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._started = self._read_journal()

    def _read_journal(self) -> list[str]:
        try:
            doc = json.loads(self.journal_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            logger.warning("site worker: unreadable journal %s; starting a new one",
                           self.journal_path)
            return []
        ids = doc.get("started") if isinstance(doc, dict) else None
        return [str(i) for i in ids] if isinstance(ids, list) else []

    def warm(self) -> None:
        """Import the handlers and the training stack (torch, transformers, peft, opacus).

        Runs beside the requests (Python's import lock keeps concurrent imports whole), so a
        query stage need not wait for torch.
        """
        t0 = time.perf_counter()
        with self._lock:
            self._client_app()
        import opacus  # noqa: F401 - the handlers import these lazily
        import peft  # noqa: F401
        import transformers  # noqa: F401

        import client.handlers  # noqa: F401
        import client.model  # noqa: F401
        import client.secure_handlers  # noqa: F401
        import client.train  # noqa: F401
        logger.info("site worker: handlers and training stack imported in %.1f s",
                    time.perf_counter() - t0)

    def _client_app(self) -> ClientApp:
        if self._app is None:
            from client.app import build_app

            self._app = build_app(relay=False)
        return self._app

    def handle(self, request: bytes) -> bytes:
        """Answer one framed request (:mod:`client.relay`)."""
        rid, msg, context = decode_request(request)
        with self._lock:
            if rid in self._replies:  # the relay lost the reply in transit: the same reply
                return self._replies[rid]
            if rid in self._started:
                logger.error("site worker: message %s (%s) was interrupted by a worker restart; "
                             "it is not run again", rid, msg.metadata.message_type)
                return encode_reply(REPLY_INTERRUPTED, detail=(
                    "the site's worker stopped while it handled this message; a message is "
                    "never run twice (the round goes on without this site)"))
            self._started = (self._started + [rid])[-_JOURNAL_KEEP:]
            atomic_write_json(self.journal_path, {"started": self._started})
            app = self._client_app()
            try:
                reply = app(msg, context)
                answer = encode_reply(REPLY_OK, reply=reply, state=context.state)
            except Exception as exc:  # noqa: BLE001 - the relay raises it, as in-process
                logger.error("site worker: %s handler raised", msg.metadata.message_type,
                             exc_info=exc)
                answer = encode_reply(REPLY_RAISED, detail=f"{type(exc).__name__}: {exc}",
                                      state=context.state)
            self._replies[rid] = answer
            while len(self._replies) > _REPLIES_KEEP:
                self._replies.popitem(last=False)
            return answer


def _bind(server: grpc.Server, sock: Path) -> None:
    """Bind ``sock`` with mode 0600 from the start (umask), replacing a stale socket only."""
    private_dir(sock.parent)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(sock).st_mode):
            raise OSError(f"{sock} exists and is not a socket; not replacing it")
        sock.unlink()
    old = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{sock}")
    finally:
        os.umask(old)
    os.chmod(sock, 0o600)


def _parent_gone(parent_pid: int | None) -> bool:
    return parent_pid is not None and os.getppid() != parent_pid


def _site_lock(journal_dir: Path, stop: threading.Event, parent_pid: int | None) -> int | None:
    """Hold the site's worker lock (wait while another worker of the site runs); fd or None."""
    fd = os.open(private_dir(journal_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not waiting:
                logger.warning("site worker: another worker of this site (same state "
                               "directory) is running; waiting for it to stop")
                waiting = True
        if stop.wait(1.0) or _parent_gone(parent_pid):
            os.close(fd)
            return None


def serve(sock: Path, journal_dir: Path, *, parent_pid: int | None = None,
          warm: bool = True) -> int:
    """Serve the site's worker on ``sock`` until SIGTERM or the parent process is gone."""
    import grpc

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = _site_lock(journal_dir, stop, parent_pid)
    if lock is None:
        return 0
    worker = SiteWorker(journal_dir)
    from client import ahead

    ahead.run_in_background()  # this process lives across messages: work starts at once
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=channel_options())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "confide.SiteWorker", {
            HANDLE_METHOD.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
                lambda data, _ctx: worker.handle(data)),
            PING_METHOD.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
                lambda data, _ctx: str(os.getpid()).encode()),
        }),))
    _bind(server, sock)
    server.start()
    logger.info("site worker %d listening on %s", os.getpid(), sock)
    if warm:
        threading.Thread(target=worker.warm, name="warm", daemon=True).start()
    try:
        while not stop.wait(1.0):
            if _parent_gone(parent_pid):
                logger.warning("site worker: its agent (pid %d) is gone; stopping", parent_pid)
                break
    except KeyboardInterrupt:
        pass
    server.stop(grace=2.0).wait(5.0)
    with contextlib.suppress(OSError):
        sock.unlink()  # this worker's own socket: it holds the site's lock
    os.close(lock)
    return 0


class WorkerSupervisor:
    """Start the site worker as a child process and restart it whenever it exits."""

    def __init__(self, name: str, sock: Path, journal_dir: Path, *, env: dict[str, str],
                 out: TextIO = sys.stdout, cwd: Path | None = None) -> None:
        self.name, self.sock, self.journal_dir = name, sock, journal_dir
        self.env, self.out, self.cwd = env, out, cwd
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _args(self) -> list[str]:
        return [sys.executable, "-m", "client.worker", "--socket", str(self.sock),
                "--journal-dir", str(self.journal_dir), "--parent-pid", str(os.getpid())]

    def _spawn(self) -> subprocess.Popen[str]:
        private_dir(self.journal_dir)
        private_dir(self.sock.parent)
        repo = str(Path(__file__).resolve().parent.parent)
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(self._args(), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True, cwd=str(self.cwd or repo))
        self.starts += 1
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()
        logger.info("site %s: worker started (pid %d, socket %s)", self.name, proc.pid, self.sock)
        return proc

    def _pump(self, stream: TextIO) -> None:
        for line in stream:
            self.out.write(f"[{self.name} worker] {line}")
            self.out.flush()

    def start(self) -> None:
        """Start the worker and a thread that restarts it (backoff 1 s doubling up to 30 s)."""
        self.proc = self._spawn()
        self._thread = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            assert self.proc is not None
            started = time.monotonic()
            code = self.proc.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            logger.warning("site %s: worker exited with %s; restarting it in %.0f s",
                           self.name, code, backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            try:
                self.proc = self._spawn()
            except OSError as exc:
                logger.error("site %s: cannot restart the worker: %s", self.name, exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after ``timeout`` s) and its watcher."""
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process (started by :class:`WorkerSupervisor`)."""
    ap = argparse.ArgumentParser(description="Confide's resident site worker")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--journal-dir", required=True)
    ap.add_argument("--parent-pid", type=int, default=None)
    ap.add_argument("--no-warm", action="store_true", help="import the training stack lazily")
    args = ap.parse_args(argv)
    if os.environ.get("CONFIDE_SITE_LOG") == "1":
        from protocol.console import log_events

        log_events(sys.stderr, ("client", "privacy"), replace=False)
    return serve(Path(args.socket), Path(args.journal_dir), parent_pid=args.parent_pid,
                 warm=not args.no_warm)


if __name__ == "__main__":
    sys.exit(main())
