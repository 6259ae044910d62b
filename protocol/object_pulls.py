"""Quicker retries when Flower pulls a message's arrays that are not stored yet.

Flower 1.39 sends a message's header first and its arrays (each an object) after it; the
receiving side may see the header before the arrays are in. Its ``pull_objects`` then waits
1 s before it tries an object again, then 2 s, 4 s ... (``PULL_INITIAL_BACKOFF``). Every
message of a round that carries an adapter (the coordinator's to a site, a site's reply to
the coordinator) met that race on loopback, and paid ~1 s for it each time.

:func:`quicken_object_pulls` rebinds a Flower module's ``pull_objects`` to retry after
:data:`FIRST_RETRY_S` instead, doubling to at most :data:`BACKOFF_CAP_S`. Only the waits change: the
objects, their checks and the give-up limits (tries and time) are Flower's. Used by the
site's SuperNode (:mod:`client.supernode_process`) and the coordinator's ServerApp
(:mod:`server.app`), each for the module that pulls in its process.
"""

from __future__ import annotations

import functools
import importlib
import inspect

__all__ = ["BACKOFF_CAP_S", "FIRST_RETRY_S", "FLOWER_SERIES", "quicken_object_pulls",
           "unsupported_flower"]

#: first wait before an object is tried again (Flower's own: 1 s); it doubles each try
FIRST_RETRY_S = 0.02
#: longest wait between two tries of one object (Flower's own cap: 10 s)
BACKOFF_CAP_S = 1.0
#: the Flower release whose internals the site and coordinator patch for their waits
FLOWER_SERIES = "1.39."
_MARK = "_confide_quick_pulls"


def unsupported_flower() -> str | None:
    """Why the installed Flower is not the one Confide's patches were checked against, or None."""
    from importlib.metadata import version

    flwr_version = version("flwr")
    if not flwr_version.startswith(FLOWER_SERIES):
        return f"flwr {flwr_version} is not {FLOWER_SERIES}x"
    return None


def quicken_object_pulls(module_name: str) -> str | None:
    """Make ``module_name.pull_objects`` retry sooner; the reason when it cannot.

    Idempotent (a second call rebinds from Flower's own function). Refuses, and changes
    nothing, on a Flower other than :data:`FLOWER_SERIES` or when the module has no such
    function with an ``initial_backoff`` parameter.
    """
    why = unsupported_flower()
    if why:
        return why
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return f"{module_name} cannot be imported ({exc})"
    pull = getattr(module, "pull_objects", None)
    pull = getattr(pull, _MARK, pull)  # the original under an earlier rebinding
    if pull is None or "initial_backoff" not in inspect.signature(pull).parameters:
        return f"{module_name}.pull_objects has changed"
    quick = functools.partial(pull, initial_backoff=FIRST_RETRY_S, backoff_cap=BACKOFF_CAP_S)
    setattr(quick, _MARK, pull)
    module.pull_objects = quick  # type: ignore[attr-defined]
    return None
