"""The site's own ClientApp process: it runs the code installed at the site, never the FAB's.

In deployment a Flower SuperNode starts one ``flwr-clientapp`` process per message, and that
process imports the ClientApp of the FAB the coordinator submitted with the run: code chosen
by the coordinator, run with the site's data, keys and ledger at hand. Every guarantee the
site's code gives (its DP policy, its budget, secure aggregation) would then be the
coordinator's to keep or drop.

``confide client`` therefore puts a command of that name first on its SuperNode's ``PATH``
(:func:`install_shim`) that runs :func:`main`: Flower's own ClientApp process (the same
Runtime API exchange, heartbeats and error replies), with one change: the ClientApp it
executes is :data:`SITE_APP` from the site's installed Confide, whatever the FAB carries.
The FAB is still unpacked by Flower (that runs none of its code) and its hash is logged, so
the site operator sees which app the coordinator submitted.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from flwr.clientapp import ClientApp

__all__ = ["SHIM_DIR", "SHIM_NAME", "SITE_APP", "install_shim", "load_site_app", "main"]

logger = logging.getLogger(__name__)  # the site log ("client" events) once client.app is imported

#: the command Flower's SuperExec starts for each ClientApp task (looked up on ``PATH``)
SHIM_NAME = "flwr-clientapp"
#: the folder of the site's state directory that holds the command (first on ``PATH``)
SHIM_DIR = "clientapp-bin"
#: the ClientApp every message runs at a deployed site: the site's installed code
SITE_APP = "client.app:app"


def load_site_app(fab_id: str, fab_version: str, fab_hash: str) -> ClientApp:
    """Return the site's installed ClientApp; the submitted FAB's code is not imported.

    Same signature as the loader Flower builds (``flwr.clientapp.utils``), so it takes
    that loader's place in the process.
    """
    module_name, _, attr = SITE_APP.partition(":")
    module = importlib.import_module(module_name)
    origin = Path(module.__file__ or "").resolve()
    logger.info("running the site's own ClientApp %s (%s); the coordinator's app %s %s "
                "(FAB sha256 %s) is not executed", SITE_APP, origin.parent, fab_id or "-",
                fab_version or "-", fab_hash[:16] or "-")
    app = getattr(module, attr)
    if not isinstance(app, ClientApp):
        raise TypeError(f"{SITE_APP} is a {type(app).__name__}, not a ClientApp")
    return app


def _site_loader(default_app_ref: str, app_path: str | None,
                 multi_app: bool) -> Callable[[str, str, str], ClientApp]:
    del default_app_ref, app_path, multi_app
    return load_site_app


def main() -> None:
    """Run one ClientApp task for the SuperNode, with the site's code (``flwr-clientapp`` CLI)."""
    cli = importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")

    # Flower 1.39 builds its loader here, and imports the FAB's ClientApp through it. Fail
    # loudly if a later Flower moves it, rather than silently running the FAB's code.
    if not callable(getattr(runtime, "get_load_client_app_fn", None)):
        raise RuntimeError("flwr.supernode.runtime.run_clientapp.get_load_client_app_fn is "
                           "gone: this Flower version is not supported by confide-clientapp")
    setattr(runtime, "get_load_client_app_fn", _site_loader)  # noqa: B010 - a module swap
    cli.flwr_clientapp()


def install_shim(state_dir: Path) -> Path:
    """Write ``<state_dir>/clientapp-bin/flwr-clientapp``, which runs :func:`main`.

    The command runs with this interpreter; its folder is the site's own (mode 0700). Put
    the folder (the returned path's parent) first on the SuperNode's ``PATH``.
    """
    bin_dir = state_dir / SHIM_DIR
    bin_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(bin_dir, stat.S_IRWXU)
    shim = bin_dir / SHIM_NAME
    text = (f"#!{sys.executable}\n"
            "from client.clientapp_process import main\n\n"
            "main()\n")
    tmp = shim.with_name(shim.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, stat.S_IRWXU)
    os.replace(tmp, shim)
    return shim
