"""A secure round's local work, started when its advertise-keys request arrives.

A secure round's adapter and instructions travel with its first stage (advertise-keys), not
with the masked-input stage: the site checks them there and starts its local work (the
training of a round, or the evaluation of a secure evaluation) while the coordinator routes
keys and shares, and the masked-input stage takes the result. The key stages then cost no
time of their own at a site whose process lives across messages.

Where the work runs is the site's choice, never the coordinator's:

* In the resident worker (:mod:`client.worker` calls :func:`run_in_background`), the work
  runs in a thread of the worker from the advertise-keys request on; the masked-input
  handler waits for it (unless the site sets ``work-ahead = false``). If the worker
  restarts in between, the work is lost and the site drops out of that round (its ledger,
  written by the work before anything leaves, says what it spent).
* Anywhere else (the simulation engine, Flower's own process per message), the adapter and
  instructions are kept in the node's ``context.state`` and the work runs inside the
  masked-input handler, as if they had come with it.

Either way the work is bound to the session it was started for (its config binding: run,
round, attempt, cohort, graph seed): a new session drops the old work, and only one piece of
local work uses the site's cached model at a time (:data:`MODEL_LOCK`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context

from client.deploy_config import NODE_WORK_AHEAD
from protocol.instructions import RoundInstructions

__all__ = ["MODEL_LOCK", "LocalWorkLost", "discard", "instructions", "result", "run_in_background",
           "start"]

#: context.state keys of the work's inputs (site-local, never sent)
_INSTR_KEY = "ahead-instructions"
_ARRAYS_KEY = "ahead-arrays"
_BINDING_KEY = "ahead-binding"

#: held by whatever uses the site's cached model (training, evaluation): one at a time, so
#: work running in the background never shares the model with a handler
MODEL_LOCK = threading.RLock()

#: the local work: (instructions, the adapter's ArrayRecord, context) -> its outcome
Work = Callable[[RoundInstructions, ArrayRecord, Context], Any]


class LocalWorkLost(RuntimeError):
    """The session's local work is not here (the site's worker restarted since it began)."""


@dataclass
class _Job:
    binding: bytes
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Any = None
    error: BaseException | None = None

    def run(self, work: Work, instr: RoundInstructions, arrays: ArrayRecord,
            context: Context) -> None:
        try:
            self.outcome = work(instr, arrays, context)
        except BaseException as exc:  # noqa: BLE001 - handed to the masked-input handler
            self.error = exc
        finally:
            self.done.set()


_background = False
_jobs: dict[int, _Job] = {}  # by node id
_jobs_lock = threading.Lock()


def run_in_background(on: bool = True) -> None:
    """Run local work in a thread from the advertise-keys request on (a resident process)."""
    global _background
    _background = on


def start(context: Context, binding: bytes, instr_record: ConfigRecord, arrays: ArrayRecord,
          work: Work | None) -> None:
    """Begin the node's local work for the session ``binding`` (or keep it for later).

    ``work`` None keeps only the instructions: the session is one the site will decline.
    """
    discard(context)
    context.state[_INSTR_KEY] = instr_record
    context.state[_BINDING_KEY] = ConfigRecord({"binding": binding})
    if work is None:
        return
    if not _background or context.node_config.get(NODE_WORK_AHEAD) is False:
        context.state[_ARRAYS_KEY] = arrays
        return
    instr = RoundInstructions.from_record(instr_record)
    job = _Job(binding)
    with _jobs_lock:
        _jobs[context.node_id] = job
    threading.Thread(target=job.run, args=(work, instr, arrays, context),
                     name=f"confide-local-work-{context.node_id}", daemon=True).start()


def instructions(context: Context, binding: bytes) -> RoundInstructions:
    """Return the instructions the session ``binding`` began with; KeyError if none."""
    rec: Any = context.state[_BINDING_KEY] if _BINDING_KEY in context.state else None
    if rec is None or bytes(rec["binding"]) != binding or _INSTR_KEY not in context.state:
        raise KeyError("no adapter and instructions came with this session's advertise-keys")
    return RoundInstructions.from_record(context.state[_INSTR_KEY])


def result(context: Context, binding: bytes, instr: RoundInstructions, work: Work) -> Any:
    """Return the outcome of the session's local work: wait for it, or run it now.

    ``instr`` are the session's instructions (:func:`instructions`). Raises what the work
    raised, or :class:`LocalWorkLost` when it was started in a process that is gone.
    """
    with _jobs_lock:
        job = _jobs.get(context.node_id)
        if job is not None and job.binding == binding:
            del _jobs[context.node_id]
        else:
            job = None
    if job is not None:
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.outcome
    if _ARRAYS_KEY in context.state:
        arrays: Any = context.state[_ARRAYS_KEY]
        return work(instr, arrays, context)
    raise LocalWorkLost("the local work of this session is not in this process (the "
                        "site's worker restarted since the round began)")


def discard(context: Context) -> None:
    """Forget the node's local work and its inputs (a thread still running finishes alone)."""
    with _jobs_lock:
        _jobs.pop(context.node_id, None)
    for key in (_INSTR_KEY, _ARRAYS_KEY, _BINDING_KEY):
        if key in context.state:
            del context.state[key]
