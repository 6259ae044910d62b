"""Flower ClientApp: the site agent's message handlers, registered explicitly (Message API).

:func:`build_app` maps each message type of :mod:`protocol.wire` to its handler: the plain
ones in :mod:`client.handlers`, the secure-aggregation stages in
:mod:`client.secure_handlers`. Importing a handler module registers nothing, and this module
imports none: each is imported at its first message.

When the node config names the site's resident worker
(:data:`~client.deploy_config.NODE_WORKER_SOCKET`, set by ``confide client``), each handler
only relays its message to that worker (:mod:`client.relay`), which runs the same handler on
the model, data and privacy stack it keeps loaded; this process then never imports torch,
transformers, peft or opacus. Without that key (simulation, tests) the handlers run here.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.deploy_config import NODE_WORKER_SOCKET
from protocol.console import log_events
from protocol.wire import Action

__all__ = ["SITE_LOG_ENV", "app", "build_app"]

#: Set by ``confide client`` for its SuperNode: the site's own events (DP plan, decline,
#: training) then reach the site operator's log, one line each with the round number.
SITE_LOG_ENV = "CONFIDE_SITE_LOG"

Handler = Callable[[Message, Context], Message]


def _site_logging() -> None:
    if os.environ.get(SITE_LOG_ENV) == "1":
        log_events(sys.stderr, ("client", "privacy"), replace=False)


def _route(module: str, name: str, *, relay: bool) -> Handler:
    """Wrap ``module.name``: imported at its first call, relayed when a worker is named."""

    def handle(msg: Message, context: Context) -> Message:
        if relay and context.node_config.get(NODE_WORKER_SOCKET):
            from client.relay import forward

            return forward(msg, context)
        handler: Handler = getattr(importlib.import_module(module), name)
        return handler(msg, context)

    handle.__name__ = handle.__qualname__ = name
    handle.__doc__ = f"Run :func:`{module}.{name}` (in the site's worker when it has one)."
    return handle


def build_app(*, relay: bool = True) -> ClientApp:
    """Build the site's ClientApp with every handler registered explicitly.

    ``relay=False`` (the site worker itself) always runs the handlers in this process.
    """
    _site_logging()
    plain, secure = "client.handlers", "client.secure_handlers"
    client_app = ClientApp()
    client_app.train()(_route(plain, "train", relay=relay))
    client_app.evaluate()(_route(plain, "evaluate", relay=relay))
    client_app.query(Action.HELLO)(_route(plain, "hello", relay=relay))
    client_app.query(Action.SECAGG_ADVERTISE)(_route(secure, "advertise", relay=relay))
    client_app.query(Action.SECAGG_SHARE)(_route(secure, "share", relay=relay))
    client_app.train(Action.SECAGG_MASKED)(_route(secure, "masked_train", relay=relay))
    client_app.evaluate(Action.SECAGG_MASKED)(_route(secure, "masked_evaluate", relay=relay))
    client_app.query(Action.SECAGG_CONSISTENCY)(_route(secure, "consistency", relay=relay))
    client_app.query(Action.SECAGG_UNMASK)(_route(secure, "unmask", relay=relay))
    return client_app


app = build_app()
