"""Only a site's own configuration can let it release per-site figures in the clear.

A dishonest coordinator chooses the run config, so it can put ``release-metrics = true`` in
the stand-in policy it sends; a deployed site must ignore that and follow its node config.
"""

from __future__ import annotations

import json

from flwr.app import Context, RecordDict

from client.local_round import clear_metrics, releases_metrics
from protocol.config import RunConfig
from protocol.wire import Metric


def _context(node_config: dict[str, object]) -> Context:
    return Context(run_id=1, node_id=1, node_config=dict(node_config), state=RecordDict(),
                   run_config={})


def _cfg(release: bool) -> RunConfig:
    policy = {"budget-epsilon": 8.0, "release-metrics": release}
    return RunConfig.from_mapping({"dp": True, "dp-policy": json.dumps(policy)})


def test_a_deployed_site_ignores_a_release_the_coordinator_asks_for() -> None:
    deployed = _context({"data-path": "/srv/site", "dp-budget-epsilon": 8.0})
    assert releases_metrics(deployed, _cfg(True)) is False
    figures = {Metric.TRAIN_LOSS: 5.1, Metric.NUM_EXAMPLES: 300, Metric.EPSILON: 7.9}
    kept = clear_metrics(figures, release=releases_metrics(deployed, _cfg(True)))
    assert Metric.TRAIN_LOSS not in kept and Metric.NUM_EXAMPLES not in kept


def test_a_deployed_site_releases_only_when_its_own_node_config_says_so() -> None:
    own = _context({"data-path": "/srv/site", "dp-release-metrics": True})
    assert releases_metrics(own, _cfg(False)) is True


def test_a_simulated_site_follows_its_simulated_policy() -> None:
    assert releases_metrics(_context({"partition-id": 0}), _cfg(True)) is True
    assert releases_metrics(_context({"partition-id": 0}), _cfg(False)) is False
