"""Flower ClientApp: the site agent's message handlers, registered explicitly (Message API).

:func:`build_app` maps each message type of :mod:`protocol.wire` to its handler: the plain
ones in :mod:`client.handlers`, the secure-aggregation stages in
:mod:`client.secure_handlers`. Importing a handler module registers nothing.
"""

from __future__ import annotations

import os
import sys

from flwr.clientapp import ClientApp

from client import handlers, secure_handlers
from protocol.console import log_events
from protocol.wire import Action

__all__ = ["SITE_LOG_ENV", "app", "build_app"]

#: Set by ``confide client`` for its SuperNode: the site's own events (DP plan, decline,
#: training) then reach the site operator's log, one line each with the round number.
SITE_LOG_ENV = "CONFIDE_SITE_LOG"


def _site_logging() -> None:
    if os.environ.get(SITE_LOG_ENV) == "1":
        log_events(sys.stderr, ("client", "privacy"), replace=False)


def build_app() -> ClientApp:
    """Build the site's ClientApp with every handler registered explicitly."""
    _site_logging()
    client_app = ClientApp()
    client_app.train()(handlers.train)
    client_app.evaluate()(handlers.evaluate)
    client_app.query(Action.HELLO)(handlers.hello)
    client_app.query(Action.SECAGG_ADVERTISE)(secure_handlers.advertise)
    client_app.query(Action.SECAGG_SHARE)(secure_handlers.share)
    client_app.train(Action.SECAGG_MASKED)(secure_handlers.masked_train)
    client_app.evaluate(Action.SECAGG_MASKED)(secure_handlers.masked_evaluate)
    client_app.query(Action.SECAGG_CONSISTENCY)(secure_handlers.consistency)
    client_app.query(Action.SECAGG_UNMASK)(secure_handlers.unmask)
    return client_app


app = build_app()
