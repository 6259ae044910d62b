"""The per-message ClientApp's side of the resident site worker: forward, wait, reply.

In deployment Flower runs every message in a fresh ``flwr-clientapp`` process. When the node
config names the site worker's socket (:data:`~client.deploy_config.NODE_WORKER_SOCKET`, set
by ``confide client``), :mod:`client.app` hands each message to :func:`forward`, which sends
it with the node's :class:`~flwr.app.Context` to the worker (:mod:`client.worker`) over gRPC on
a Unix-domain socket, waits for the reply and copies the worker's updated ``context.state``
back, so Flower keeps the node state between messages as before. This module imports neither
torch, transformers, peft nor opacus: the relay process pays for flwr and grpc only.

The wire format is Flower's own protobuf serde (``message_to_proto`` / ``context_to_proto``,
``recorddict_to_proto`` for the state) in a small frame: a JSON header (the request id, or the
reply's status) and the protobuf parts, each length-prefixed.

A worker that is (re)starting is waited for up to ``worker-wait`` seconds; a worker that dies
while it handles a message is waited for again and asked once more under the same request id,
which the restarted worker answers as interrupted instead of running it twice (its journal,
:mod:`client.worker`). A worker that stays down gets an error reply that says so, never a
crash of the ClientApp process.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Error, Message, RecordDict

from client.deploy_config import NODE_WORKER_SOCKET, NODE_WORKER_WAIT, WORKER_WAIT_S
from protocol.config import RunConfig

if TYPE_CHECKING:
    import grpc

__all__ = ["HANDLE_METHOD", "PING_METHOD", "REPLY_INTERRUPTED", "REPLY_OK", "REPLY_RAISED",
           "WorkerError", "channel_options", "decode_reply", "decode_request", "encode_reply",
           "encode_request", "forward"]

logger = logging.getLogger(__name__)

#: the worker's gRPC methods (generic handlers, bytes in and out, no protoc step)
HANDLE_METHOD = "/confide.SiteWorker/Handle"
PING_METHOD = "/confide.SiteWorker/Ping"
_VERSION = 1
#: reply statuses: handled; the handler raised (the ClientApp raises too, as in-process);
#: the request was started by a worker that died (it is never run twice)
REPLY_OK, REPLY_RAISED, REPLY_INTERRUPTED = "ok", "raised", "interrupted"
#: how often a request whose worker died under it is sent again (to the restarted worker)
_MAX_RESENDS = 5
_CHANNELS: dict[str, grpc.Channel] = {}
_CHANNELS_LOCK = threading.Lock()
_MAX_BYTES = 1 << 30


class WorkerError(RuntimeError):
    """The site worker's handler raised; the text is the exception's type and message."""


def channel_options() -> list[tuple[str, int]]:
    """Return the gRPC options of both ends: large adapters, quick reconnects to a worker."""
    return [("grpc.max_send_message_length", _MAX_BYTES),
            ("grpc.max_receive_message_length", _MAX_BYTES),
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)]


def _frame(header: dict[str, Any], *parts: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    out = [struct.pack(">I", len(head)), head]
    for part in parts:
        out += [struct.pack(">Q", len(part)), part]
    return b"".join(out)


def _unframe(data: bytes, n_parts: int) -> tuple[dict[str, Any], list[bytes]]:
    try:
        (n,) = struct.unpack_from(">I", data, 0)
        header = json.loads(data[4:4 + n])
        pos, parts = 4 + n, []
        for _ in range(n_parts):
            (m,) = struct.unpack_from(">Q", data, pos)
            parts.append(data[pos + 8:pos + 8 + m])
            pos += 8 + m
    except (struct.error, ValueError) as exc:
        raise ValueError(f"malformed site-worker frame: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != _VERSION or pos != len(data):
        raise ValueError("malformed site-worker frame (header, version or length)")
    return header, parts


def encode_request(request_id: str, msg: Message, context: Context) -> bytes:
    """Frame a message and its node context for the worker."""
    from flwr.common.serde import context_to_proto, message_to_proto

    return _frame({"v": _VERSION, "id": request_id},
                  message_to_proto(msg).SerializeToString(),
                  context_to_proto(context).SerializeToString())


def decode_request(data: bytes) -> tuple[str, Message, Context]:
    """Read a framed request: (request id, message, context)."""
    from flwr.common.serde import context_from_proto, message_from_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    header, (raw_msg, raw_ctx) = _unframe(data, 2)
    rid = header.get("id")
    if not isinstance(rid, str) or not rid:
        raise ValueError("site-worker request without an id")
    pm, pc = ProtoMessage(), ProtoContext()
    pm.ParseFromString(raw_msg)
    pc.ParseFromString(raw_ctx)
    return rid, message_from_proto(pm), context_from_proto(pc)


def encode_reply(status: str, *, detail: str = "", reply: Message | None = None,
                 state: RecordDict | None = None) -> bytes:
    """Frame the worker's answer: status, detail, the reply message and the node state."""
    from flwr.common.serde import message_to_proto, recorddict_to_proto

    return _frame({"v": _VERSION, "status": status, "detail": detail,
                   "reply": reply is not None, "state": state is not None},
                  message_to_proto(reply).SerializeToString() if reply is not None else b"",
                  recorddict_to_proto(state).SerializeToString() if state is not None else b"")


def decode_reply(data: bytes) -> tuple[str, str, Message | None, RecordDict | None]:
    """Read a framed answer: (status, detail, reply message or None, node state or None)."""
    from flwr.common.serde import message_from_proto, recorddict_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    header, (raw_reply, raw_state) = _unframe(data, 2)
    status = header.get("status")
    if status not in (REPLY_OK, REPLY_RAISED, REPLY_INTERRUPTED):
        raise ValueError(f"site-worker reply with an unknown status {status!r}")
    reply = state = None
    if header.get("reply"):
        pm = ProtoMessage()
        pm.ParseFromString(raw_reply)
        reply = message_from_proto(pm)
    if header.get("state"):
        ps = ProtoRecordDict()
        ps.ParseFromString(raw_state)
        state = recorddict_from_proto(ps)
    return status, str(header.get("detail", "")), reply, state


def _set_state(context: Context, state: RecordDict) -> None:
    """Make ``context.state`` hold exactly ``state`` (in place: Flower keeps this object)."""
    for key in list(context.state.keys()):
        if key not in state:
            del context.state[key]
    for key, record in state.items():
        context.state[key] = record


def _error_reply(msg: Message, reason: str) -> Message:
    from flwr.common.constant import ErrorCode

    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                   reply_to=msg)


def _call(channel: grpc.Channel, request: bytes, *, wait: float,
          timeout: float) -> tuple[bytes | None, str]:
    """Send ``request`` once the worker is up; ``(answer, "")`` or ``(None, why not)``."""
    import grpc

    handle = channel.unary_unary(HANDLE_METHOD)
    for attempt in range(_MAX_RESENDS + 1):
        try:
            grpc.channel_ready_future(channel).result(timeout=wait)
        except grpc.FutureTimeoutError:
            return None, (f"the site's worker did not answer for {wait:.0f} s (`worker-wait`); "
                          "`confide client` starts and restarts it: see the site's log")
        try:
            return handle(request, timeout=timeout), ""
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.UNAVAILABLE and attempt < _MAX_RESENDS:
                logger.warning("the site's worker went away during a message; waiting up to "
                               "%.0f s for its restart", wait)
                time.sleep(0.5)
                continue
            name = code.name if code is not None else type(exc).__name__
            return None, f"the site's worker failed to answer ({name})"
    return None, "the site's worker kept failing during this message"


def _channel(sock: str) -> grpc.Channel:
    """Return this process's channel to the worker at ``sock``, opened once and kept.

    A resident relay (the site's executor) sends every message of the run through it; it
    reconnects by itself when the worker restarts. (Closing a channel that waited for
    readiness costs ~0.2 s in grpcio, per message when it was opened per message.)
    """
    import grpc

    with _CHANNELS_LOCK:
        channel = _CHANNELS.get(sock)
        if channel is None:
            channel = _CHANNELS[sock] = grpc.insecure_channel(f"unix:{sock}",
                                                              options=channel_options())
        return channel


def forward(msg: Message, context: Context) -> Message:
    """Relay ``msg`` to the site worker named in the node config; return its reply.

    The node's state comes back with the reply and replaces ``context.state``. A handler that
    raised in the worker raises :class:`WorkerError` here (Flower then sends an error reply,
    as for a handler that raised in this process); a worker that stays down, fails, or died
    while handling this message gets an error reply that says so.
    """
    sock = str(context.node_config[NODE_WORKER_SOCKET])
    wait = float(context.node_config.get(NODE_WORKER_WAIT, WORKER_WAIT_S))
    # a reply after the coordinator's round timeout is of no use; bound the wait by it
    round_timeout = RunConfig.from_mapping(context.run_config, allow_extra=True).round_timeout
    timeout = round_timeout + wait
    request = encode_request(uuid.uuid4().hex, msg, context)
    t0 = time.perf_counter()
    answer, why = _call(_channel(sock), request, wait=wait, timeout=timeout)
    if answer is None:
        logger.error("%s (socket %s, message %s)", why, sock, msg.metadata.message_type)
        return _error_reply(msg, why)
    status, detail, reply, state = decode_reply(answer)
    if state is not None:
        _set_state(context, state)
    logger.debug("relayed %s in %.2f s", msg.metadata.message_type, time.perf_counter() - t0)
    if status == REPLY_RAISED:
        raise WorkerError(detail)
    if status == REPLY_INTERRUPTED or reply is None:
        return _error_reply(msg, detail or "the site's worker gave no reply")
    if reply.has_error():
        return Message(reply.error, reply_to=msg)
    return Message(reply.content, reply_to=msg)
