"""The wire vocabulary between the coordinator and a site, each name defined once.

Modelled on Flower's ``flwr/common/secure_aggregation/secaggplus_constants.py``: classes of
string constants that the ServerApp (``server/``), the ClientApp (``client/``), the
secure-aggregation state machine (``privacy/secagg/``) and the tests all import. The values
are what travels; changing one changes the wire format.
"""

from __future__ import annotations

from typing import Self

__all__ = [
    "FAULT_POINTS",
    "PROTOCOL_VERSION",
    "SECAGG_STAGES",
    "STAGE_MESSAGE_TYPE",
    "Action",
    "Field",
    "Key",
    "MessageType",
    "Metric",
    "Reason",
    "SiteLevelDPKey",
    "Stage",
    "Status",
    "fault_point",
]

PROTOCOL_VERSION = 5  # 2: masked inputs in the ring's own width (uint16 up to 16 bits);
#                       3: adapters as one packed buffer (protocol.messages.state_to_record)
#                       4: a train message may evaluate the adapter it carries
#                          (evaluate-received; its masked input then ends in the figures)
#                       5: a secure round's adapter and instructions come with advertise-keys
#                          (the site's local work begins there), not with the masked input


class _Names:
    """A namespace of constants, never instantiated."""

    def __new__(cls) -> Self:
        raise TypeError(f"{cls.__name__} cannot be instantiated")


class Action(_Names):
    """The action part of a message type (``"<category>.<action>"``).

    As ``ClientApp.train(action)`` / ``.query(action)`` register it.
    """

    HELLO = "hello"
    SECAGG_ADVERTISE = "secagg_advertise"
    SECAGG_SHARE = "secagg_share"
    SECAGG_MASKED = "secagg"
    SECAGG_CONSISTENCY = "secagg_consistency"
    SECAGG_UNMASK = "secagg_unmask"


class MessageType(_Names):
    """Flower message types the coordinator sends (equal to Flower's for train/evaluate)."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    QUERY = "query"
    HELLO = f"{QUERY}.{Action.HELLO}"
    SECAGG_ADVERTISE = f"{QUERY}.{Action.SECAGG_ADVERTISE}"
    SECAGG_SHARE = f"{QUERY}.{Action.SECAGG_SHARE}"
    SECAGG_MASKED = f"{TRAIN}.{Action.SECAGG_MASKED}"
    #: the masked-input stage of a secure evaluation (``protocol.secure_stats``)
    SECAGG_EVALUATE = f"{EVALUATE}.{Action.SECAGG_MASKED}"
    SECAGG_CONSISTENCY = f"{QUERY}.{Action.SECAGG_CONSISTENCY}"
    SECAGG_UNMASK = f"{QUERY}.{Action.SECAGG_UNMASK}"


class Stage(_Names):
    """Stages of one secure-aggregation round, in protocol order.

    ``SETUP`` is a fresh session; ``DONE`` and ``ABORTED`` are terminal. The value travels in
    the ``"stage"`` payload key and names a fault point (``faults = "site@stage"``).
    ``CONSISTENCY_CHECK`` (Bonawitz et al. 2017, ConsistencyCheck) sits between the masked
    input and the unmask: every contributor signs the contributor set before any reveal.
    """

    SETUP = "setup"
    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


#: The five stages that each take one message per site, in order.
SECAGG_STAGES: tuple[str, ...] = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT,
                                  Stage.CONSISTENCY_CHECK, Stage.UNMASK)

#: The Flower message type that drives each secure-aggregation stage.
STAGE_MESSAGE_TYPE: dict[str, str] = {
    Stage.ADVERTISE_KEYS: MessageType.SECAGG_ADVERTISE,
    Stage.SHARE_KEYS: MessageType.SECAGG_SHARE,
    Stage.MASKED_INPUT: MessageType.SECAGG_MASKED,
    Stage.CONSISTENCY_CHECK: MessageType.SECAGG_CONSISTENCY,
    Stage.UNMASK: MessageType.SECAGG_UNMASK,
}

#: Fault-injection points (``faults = "site@point[@round]"``): each secure-aggregation stage,
#: the plain ``train`` message, and the short names users already write.
FAULT_POINTS: dict[str, str] = {
    **{s: s for s in SECAGG_STAGES},
    MessageType.TRAIN: MessageType.TRAIN,
    "advertise": Stage.ADVERTISE_KEYS,
    "share": Stage.SHARE_KEYS,
}


def fault_point(name: str) -> str | None:
    """Return the canonical point a fault name refers to, or None.

    ``"advertise"`` -> ``"advertise-keys"``; None for a name that is not a fault point.
    """
    return FAULT_POINTS.get(name)


class Key(_Names):
    """RecordDict keys of a message's content."""

    ARRAYS = "arrays"  # ArrayRecord: global adapter (to sites) or adapter delta (from sites)
    CONFIG = "config"  # ConfigRecord: the round's instructions, or a site's status reply
    METRICS = "metrics"  # MetricRecord: num-examples, losses, epsilon
    SECAGG = "secagg"  # ConfigRecord {"payload": canonical JSON of the non-array fields}
    SECAGG_ARRAYS = "secagg-arrays"  # ArrayRecord of the payload's numpy arrays
    COHORT_NAMES = "cohort-names"  # ConfigRecord {"names": JSON {node id: site name}}


class Field(_Names):
    """Field names inside the records."""

    # a site's status record (Key.CONFIG of every reply)
    STATUS = "status"
    SITE = "site"
    REASON = "reason"
    #: the site's signed ledger summary (JSON) and its hex Ed25519 signature
    LEDGER_SUMMARY = "ledger-summary"
    LEDGER_SIGNATURE = "ledger-signature"
    # Key.SECAGG and Key.COHORT_NAMES records
    PAYLOAD = "payload"
    NAMES = "names"
    # the round's instructions (Key.CONFIG of train / evaluate; see protocol.instructions)
    ROUND = "round"
    RUN_ID = "run-id"
    AGGREGATION = "aggregation"
    LOCAL_STEPS = "local-steps"
    BATCH_SIZE = "batch-size"
    LEARNING_RATE = "learning-rate"
    PLANNED_ROUNDS = "planned-rounds"
    DP_ENABLED = "dp-enabled"
    NOISE_MULTIPLIER = "noise-multiplier"
    #: the coordinator's PROTOCOL_VERSION; a site refuses any other (absent: not checked)
    PROTOCOL_VERSION = "protocol-version"
    #: present (true) when a train message also asks for the held-out figures of the adapter
    #: it carries, the previous round's (``eval-in-train``)
    EVALUATE_RECEIVED = "evaluate-received"
    # the secure-aggregation codec (added to the instructions of train.secagg)
    SECAGG_CLIP = "secagg-clip"
    SECAGG_SCALE = "secagg-scale"
    SECAGG_MAX_WEIGHT = "secagg-max-weight"
    MANIFEST = "manifest"
    #: present when the round runs site-level DP; its plan follows in :class:`SiteLevelDPKey`
    SITE_LEVEL_DP_MODE = "site-level-dp-mode"


class SiteLevelDPKey(_Names):
    """The site-level DP plan of a round (``privacy.ddg.DDGParams.to_config``)."""

    CLIP = "site-level-dp-clip"
    DIM = "site-level-dp-dim"
    BITS = "site-level-dp-bits"
    GAMMA = "site-level-dp-gamma"
    LOCAL_SIGMA = "site-level-dp-local-sigma"
    COHORT = "site-level-dp-cohort"
    MAX_CONTRIBUTORS = "site-level-dp-max-contributors"
    BETA = "site-level-dp-beta"
    ROTATION_SEED = "site-level-dp-rotation-seed"
    ALL = (CLIP, DIM, BITS, GAMMA, LOCAL_SIGMA, COHORT, MAX_CONTRIBUTORS, BETA, ROTATION_SEED)


class Metric(_Names):
    """MetricRecord names a site reports (Key.METRICS)."""

    NUM_EXAMPLES = "num-examples"
    NUM_TOKENS = "num-tokens"
    TRAIN_LOSS = "train-loss"
    EVAL_LOSS = "eval-loss"
    #: a plain train reply's held-out figures of the adapter it received (``eval-in-train``)
    EVAL_NUM_EXAMPLES = "eval-num-examples"
    EVAL_NUM_TOKENS = "eval-num-tokens"
    STEPS = "steps"
    EPSILON = "epsilon"
    DELTA = "delta"
    NOISE_MULTIPLIER = "noise-multiplier"
    SAMPLE_RATE = "sample-rate"
    MAX_GRAD_NORM = "max-grad-norm"
    TIME_SETUP = "time-setup"
    TIME_TRAIN = "time-train"
    TIME_EVAL = "time-eval"
    #: what a secure-aggregation reply may carry in the clear by default: the privacy
    #: parameters the site's signed ledger summary reveals anyway (never a loss, a count or
    #: a timing; those travel inside the masked sum or stay at the site)
    LEDGER: tuple[str, ...] = (EPSILON, DELTA, NOISE_MULTIPLIER, SAMPLE_RATE, MAX_GRAD_NORM)


class Status(_Names):
    """A reply's status (``Field.STATUS``).

    ``FAILED`` / ``TIMEOUT`` also name what the coordinator records for an error reply / no
    reply.
    """

    OK = "ok"
    DECLINED = "declined"
    FAILED = "failed"
    TIMEOUT = "timeout"


class Reason(_Names):
    """Reason codes of a decline or failure that either side compares."""

    #: the round would take the site past its ε budget (it is never sampled again)
    BUDGET_EXHAUSTED = "budget-exhausted"
    #: the coordinator asked for DP weaker than the site's policy allows
    DP_WEAKER_THAN_POLICY = "dp-weaker-than-policy"
    #: the coordinator asked for DP and the site has no privacy policy
    NO_PRIVACY_POLICY = "no-privacy-policy"
    #: the site already sent a masked input for this (run, round), in this or another
    #: attempt; it declines before training (a resumed re-run goes on without it)
    ROUND_ALREADY_CONTRIBUTED = "round-already-contributed"
    #: the coordinator dropped a site whose reply was malformed; followed by what was wrong
    MALFORMED_REPLY = "malformed reply"
    #: the site refused a secure-aggregation request (bad signature, lists, parameters, ...)
    SECAGG_REFUSED = "secure aggregation refused"
    #: a site enrolled for secure aggregation was asked for a plain (unmasked) train or
    #: evaluate reply; it never sends its update or its figures in the clear
    SECAGG_REQUIRED = "secure-aggregation-required"
    #: the site's local round raised (data, policy, model); followed by the error's type
    TRAINING_FAILED = "training failed"
