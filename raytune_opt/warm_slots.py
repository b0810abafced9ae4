"""Warm worker groups (``resources.warm_workers: true``): Ray Train worker groups kept across trials.

Without them every multi-worker trial starts a Train controller and a fresh worker group and
tears both down at its end (~15-20 s of start-up on this project's 2-core machines,
``benchmarks/ddp_startup.py``). Ray Train has no group that outlives its ``fit()``, so a
*slot* is one long-lived Train run whose workers take trial assignments one after another:

- :class:`SlotPool`, an actor the sweep owns, holds the slots and the trials' assignments. A
  Tune trial (:func:`run_trial`, still the Tune trial Ray Tune's searchers and schedulers see)
  sends its loop config in and relays what comes back: each report to ``tune.report``, the
  end, or the error.
- A slot is a :class:`_SlotRunner` actor running ``fit()`` of a Train ``DataParallelTrainer``
  (``trial._trainer_class``): Ray Train still makes the worker group (placement group, process
  group, device, worker-failure restarts, checkpoint persistence). Its workers run
  :func:`_slot_worker`: ask the pool for the next assignment, run the recipe's loop on it,
  repeat.
- Each report takes the path of a per-trial run: ``ray.train.report`` on every rank; the
  controller's callback (:class:`_Forward`, once every rank reported and the checkpoint is
  registered) hands rank 0's metrics to the pool, which waits until the trial's
  ``tune.report`` returned (continue) or the trial was stopped (a scheduler's stop, a pause,
  the end of the sweep); every rank then reads the same decision (:meth:`SlotPool.decision`)
  and stops after the same report (:class:`AssignmentStopped`). The workers never run ahead
  of Tune: a stopped trial frees its slot at once, not after another epoch.

What a slot keeps across trials: the worker processes and their imports, the process group
(gloo / NCCL communicators), the device and its CUDA context, the data set read from the node
cache (the session's ``keep``: the last two data configs) and what a loop keeps through
``ctx.keep(key, fn)``. What each trial makes anew: the model, optimizer, schedule, DeepSpeed
engine, RNG seeds (``run_loop`` seeds every generator), the trial's checkpoint directory.
What a user loop keeps in module-level globals is the user's business.

Failures: a rank that raises (or dies) fails the Train group; Train restarts it (the slot's
``FailureConfig(max_failures=-1)``) and the new group continues the assignment in flight from
its last registered checkpoint (:func:`_resume_path`). An assignment whose group failed more
than :data:`MAX_FAILURES` times errors its trial (as ``FailureConfig(max_failures=2)`` does
for a per-trial run) and the slot goes on with the next. A slot whose ``fit()`` ends (its
group cannot start) errors the assignment it held; later trials get a new slot.

Shapes: a slot serves trials of one shape (:class:`Shape`: workers, CPUs and GPUs per
worker, strategy); a trial of another shape gets a slot of its own. Slots are made while the
cluster has room for them (:meth:`SlotPool._fits`), idle ones of another shape are retired to
make room, and a slot idle for :data:`IDLE_RELEASE_S` gives its resources back.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import ray

NAMESPACE = "raytune_opt"
WARM_KEY = "_raytune_opt_warm"  # rank 0's report tag "<assignment>|<group>|<seq>": popped before Tune sees it
GROUP_ENV = "RAYTUNE_OPT_GROUP"  # set on every worker of a Train worker group (train_backend.on_start)
MAX_FAILURES = 2  # worker-group failures an assignment survives (a per-trial run's FailureConfig.max_failures)
IDLE_RELEASE_S = 30.0  # an idle slot with nothing queued gives its resources back after this long
ABANDON_S = 20.0  # a trial silent this long (its actor died) is cancelled; the trial pings every HEARTBEAT_S
HEARTBEAT_S = 2.0
TAKE_WAIT_S = 0.5  # the trial's longest wait for a report before it looks at Tune's stop flag
SHUTDOWN_S = 15.0  # slots' own exit at the sweep's end before their runners are killed
_DATA_KEPT = 2  # data sets a slot's worker keeps (a sweep that searches data settings has several)


class AssignmentStopped(BaseException):
    """Raised on every rank of a slot at the report after which its trial was stopped.

    A BaseException, as Tune's own stop (``SystemExit``): a loop's ``except Exception`` must
    not swallow it."""


class SlotTrialError(RuntimeError):
    """A trial that failed in a warm slot: the worker's traceback (or why its slot ended)."""


@dataclass(frozen=True)
class Shape:
    """What a slot's worker group is: trials of another shape get a slot of their own."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    strategy: str

    @classmethod
    def of(cls, cfg: dict) -> "Shape":
        res = cfg["resources"]
        return cls(int(res["num_workers"]), float(res["cpus_per_worker"]), float(res["gpus_per_worker"]),
                   str(cfg["train"]["strategy"]))

    @property
    def per_worker(self) -> dict:
        out = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            out["GPU"] = self.gpus_per_worker
        return out

    def label(self) -> str:
        gpu = f"-{self.gpus_per_worker:g}gpu" if self.gpus_per_worker else ""
        return f"{self.num_workers}x{self.cpus_per_worker:g}cpu{gpu}-{self.strategy}"


# --------------------------------------------------------------------------- the driver's side

_POOLS: dict = {}  # name -> handle of the pools this driver started


def start_pool(exp_dir: str, remote: bool, endpoint_url: str | None, prewarm: Shape | None = None,
               prewarm_slots: int = 0) -> str:
    """Start the sweep's slot pool (owned by this process: it dies with the driver); its name.

    Args:
        exp_dir: the experiment directory (on S3 its ``bucket/prefix/NAME`` path): slots keep
            their Train runs under ``train/``.
        prewarm: the shape most trials will have; ``prewarm_slots`` slots of it start now,
            while Tune sets up and its first trials' actors start.
    """
    from raytune_opt.timeline import mark

    mark("warm_pool_start")
    name = f"raytune_opt_slots_{uuid.uuid4().hex[:12]}"
    pool = SlotPool.options(name=name, namespace=NAMESPACE, num_cpus=0, max_concurrency=1000,
                            max_restarts=0).remote(exp_dir, remote, endpoint_url, name)
    _POOLS[name] = pool  # a named actor without a handle left is still collected
    ray.get(pool.ready.remote())
    if prewarm is not None and prewarm_slots > 0:
        ray.get(pool.prewarm.remote(prewarm, prewarm_slots))
    return name


def stop_pool(name: str | None, timeout_s: float = SHUTDOWN_S) -> None:
    """End every slot (their groups exit and Train removes their placement groups), then the pool.

    Safe to call on a pool that is gone already (the cluster stopped, a Ctrl-C)."""
    from raytune_opt.timeline import mark

    pool = _POOLS.pop(name, None) if name else None
    if pool is None or not ray.is_initialized():
        return
    mark("warm_pool_stop")
    try:
        ray.get(pool.shutdown.remote(timeout_s), timeout=timeout_s + 30)
    except Exception:  # noqa: BLE001 - a pool that died or hangs is killed below either way
        pass
    try:
        ray.kill(pool)
    except Exception:  # noqa: BLE001
        pass
    mark("warm_pool_stopped")


# ------------------------------------------------------------------------- the Tune trial's side

def run_trial(pool_name: str, trial_id: str, shape: Shape, loop_config: dict, own_dir: str, store) -> None:
    """Run one trial in a warm slot (called by the Tune trial function): submit it, relay its
    reports to Tune until it ends; a stopped trial cancels its assignment.

    Args:
        own_dir: the trial's own checkpoint directory here (``trial.RECORDED`` is kept there,
            as a one-worker trial keeps it: what Tune took, for a resumed trial's replay).
        store: the trial's :class:`~raytune_opt.trial.OwnStore` (S3: ``own_dir`` is uploaded).

    Raises:
        SlotTrialError: the trial failed in its slot (the worker's traceback).
    """
    from ray import tune
    from ray.tune.result import TIME_THIS_ITER_S

    from raytune_opt.timeline import mark
    from raytune_opt.trial import _recorded_epoch

    started = time.time()
    pool = ray.get_actor(pool_name, namespace=NAMESPACE)
    loop_config = {**loop_config, "recorded_epoch": _recorded_epoch(own_dir)}
    aid = ray.get(pool.submit.remote(trial_id, shape, loop_config))
    mark("warm_submitted", trial_id=trial_id, aid=aid)
    beat = threading.Event()

    def heartbeat() -> None:  # the pool cancels an assignment whose trial went silent (its actor died)
        while not beat.wait(HEARTBEAT_S):
            pool.ping.remote(aid)

    threading.Thread(target=heartbeat, name="raytune-opt-slot-heartbeat", daemon=True).start()
    ended, ack = False, None
    try:
        while True:
            if _tune_stop_requested():
                return  # Tune stopped or paused the trial while it waited: end before Tune's reset deadline
            kind, payload = ray.get(pool.take.remote(aid, ack, TAKE_WAIT_S))
            ack = None
            if kind == "report":
                item = payload["item"]
                if "waited_s" in payload:
                    # The trial's seconds are those a slot worked on it: without its wait in the
                    # queue (other trials' turns, a slot's start), which Tune would count.
                    item = {**item, TIME_THIS_ITER_S: max(0.0, time.time() - started - payload["waited_s"])}
                # Returns once the driver took the result (or exits the thread: the trial was
                # stopped); only then may the workers go on.
                try:
                    tune.report(item)
                finally:
                    _note_recorded(item, own_dir, store)
                ack = payload["key"]
            elif kind == "done":
                ended = True
                return
            elif kind == "error":
                ended = True
                raise SlotTrialError(payload)
    finally:
        beat.set()
        if not ended:
            try:
                ray.get(pool.cancel.remote(aid), timeout=10)
            except Exception:  # noqa: BLE001 - the pool's watchdog cancels a silent trial anyway
                pass


def _note_recorded(item: dict, own_dir: str, store) -> None:
    """After ``tune.report``: the epoch Tune took (TuneSession.report does the same)."""
    from pathlib import Path

    from raytune_opt import _atomic
    from raytune_opt.trial import RECORDED

    if item.get("epoch") is not None:
        _atomic.write_text(Path(own_dir) / RECORDED, str(int(item["epoch"])))
        store.push(own_dir)


def _tune_stop_requested() -> bool:
    """Whether Tune asked this function trainable to stop (pause, stop, the sweep's end).

    Tune sets its session's stop event and expects the function's thread to end at its next
    ``tune.report``; a trial waiting for its first report must look itself. Ray's private
    session (Ray 2.60, ``ray/train/_internal/session.py``); without it, the answer is no."""
    try:
        from ray.train._internal.session import get_session

        session = get_session()
        return bool(session is not None and session.stop_event.is_set())
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------------------ the pool

@dataclass
class _Assignment:
    aid: str
    trial_id: str
    shape: Shape
    loop_config: dict
    slot: str | None = None
    cancelled: bool = False
    end: tuple | None = None  # ("done", None) | ("error", text): what the trial gets last
    pending: tuple | None = None  # (key, item): a report the trial has not taken yet
    inflight: tuple | None = None  # (key, epoch) of the report the trial is handing to Tune
    decided: dict | None = None  # (group, seq) -> continue?
    failures: int = 0
    error: str | None = None  # the last worker error (Train's after_exception)
    checkpoint: str | None = None  # the last checkpoint Train registered for this assignment
    recorded: int | None = None  # the epoch of the last report Tune took (a new group's replay point)
    last_ping: float = 0.0
    end_taken: bool = False  # the trial has its end
    submitted: float = 0.0  # when the trial asked for a slot (the pool's clock)
    released_at: float | None = None  # when a slot first took it
    wait_told: bool = False  # the trial was told how long it waited (with its first report)


@dataclass
class _Slot:
    sid: str
    shape: Shape
    run_name: str
    runner: Any = None
    group: str | None = None  # the worker group now serving (a restart makes a new one)
    old_groups: set | None = None  # groups a restart replaced: their ranks' late calls get None
    waiting: dict | None = None  # rank -> the assignment it finished last (None: none yet)
    current: str | None = None  # the assignment its ranks run
    released: set | None = None  # ranks given ``current``
    retiring: bool = False
    idle_since: float | None = None
    served: int = 0


class Pool:
    """The sweep's slots and its trials' assignments; :data:`SlotPool` is it as a Ray actor
    (asyncio: every wait is cheap).

    Trial side: :meth:`submit`, :meth:`take`, :meth:`cancel`, :meth:`ping`. Worker side:
    :meth:`next`, :meth:`decision`; the controller's callback: :meth:`report`, :meth:`error`.
    What touches the cluster is in :meth:`_launch`, :meth:`_kill` and :meth:`_nodes`.
    """

    def __init__(self, exp_dir: str, remote: bool, endpoint_url: str | None, name: str):
        self._exp_dir, self._remote, self._endpoint_url, self._name = exp_dir, remote, endpoint_url, name
        self._token = uuid.uuid4().hex[:6]  # run names unique per sweep process (a resume makes new slots)
        self._ids = itertools.count()
        self._assignments: dict[str, _Assignment] = {}
        self._queue: list[str] = []  # submitted, not yet given to a slot, in order
        self._slots: dict[str, _Slot] = {}
        self._changed = asyncio.Condition()
        self._exiting = False
        self._start_failures: dict[Shape, int] = {}
        self._watchdog = None

    async def ready(self) -> bool:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        return True

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, predicate, timeout: float | None = None) -> bool:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
                return True
            except asyncio.TimeoutError:
                return False

    # ---- trials ---------------------------------------------------------------------------
    async def submit(self, trial_id: str, shape: Shape, loop_config: dict) -> str:
        aid = f"a{next(self._ids)}-{trial_id}"
        now = time.time()
        self._assignments[aid] = _Assignment(aid, trial_id, shape, loop_config, decided={}, last_ping=now,
                                             submitted=now)
        self._queue.append(aid)
        self._dispatch()
        await self._notify()
        return aid

    async def ping(self, aid: str) -> None:
        a = self._assignments.get(aid)
        if a is not None:
            a.last_ping = time.time()

    async def take(self, aid: str, ack: tuple | None, timeout: float) -> tuple:
        """The trial's next thing: ``("report", {"item", "key"})``, ``("done", None)``,
        ``("error", text)`` or ``("wait", None)``; ``ack`` is the key of the report whose
        ``tune.report`` just returned (its workers go on). The first report also carries
        ``waited_s``: how long the trial waited for a slot to take it."""
        a = self._assignments.get(aid)
        if a is None:
            return "error", "the slot pool no longer knows this trial"
        a.last_ping = time.time()
        if ack is not None:
            a.decided.setdefault(tuple(ack), True)
            if a.inflight is not None and tuple(a.inflight[0]) == tuple(ack) and a.inflight[1] is not None:
                a.recorded = int(a.inflight[1])
            a.inflight = None
            await self._notify()
        await self._wait(lambda: a.pending is not None or a.end is not None, timeout)
        if a.pending is not None:
            key, item = a.pending
            a.pending, a.inflight = None, (key, item.get("epoch"))
            out = {"item": item, "key": key}
            if not a.wait_told and a.released_at is not None:
                out["waited_s"], a.wait_told = max(0.0, a.released_at - a.submitted), True
            return "report", out
        if a.end is not None:
            a.end_taken = True
            self._maybe_drop(a)
            return a.end
        return "wait", None

    async def cancel(self, aid: str) -> None:
        a = self._assignments.get(aid)
        if a is not None:
            self._cancel(a)
            await self._notify()

    def _cancel(self, a: _Assignment) -> None:
        a.cancelled = True
        if a.aid in self._queue:  # no slot has it yet: it simply goes
            self._queue.remove(a.aid)
        self._maybe_drop(a)
        # In a slot: every rank stops after its next report (decision() says stop); the slot
        # is free again when all of them have asked for the next assignment.

    def _maybe_drop(self, a: _Assignment) -> None:
        """Forget an assignment its trial is done with (cancelled, or took its end) that no
        slot runs any more."""
        held = any(s.current == a.aid for s in self._slots.values())
        if (a.cancelled or a.end_taken) and not held and a.aid not in self._queue:
            self._assignments.pop(a.aid, None)

    # ---- Train's controller (the slot's callback) ------------------------------------------
    async def report(self, aid: str, group: str, seq: int, item: dict, checkpoint: str | None) -> None:
        """Rank 0's report, once every rank made it: to the trial; returns when the trial
        took it into Tune (or was stopped)."""
        a = self._assignments.get(aid)
        key = (group, seq)
        if a is None or a.cancelled or a.end is not None:
            if a is not None:
                a.decided.setdefault(key, False)
                await self._notify()
            return
        if checkpoint:
            a.checkpoint = checkpoint
        a.pending = (key, item)
        await self._notify()
        await self._wait(lambda: key in a.decided or a.cancelled)
        a.decided.setdefault(key, False)  # stopped: the report went to Tune, the trial goes no further
        await self._notify()

    async def error(self, sid: str, text: str) -> None:
        """A rank of slot ``sid`` raised (Train's ``after_exception``): kept for the assignment's error."""
        slot = self._slots.get(sid)
        if slot is not None and slot.current in self._assignments:
            self._assignments[slot.current].error = text

    # ---- the workers ------------------------------------------------------------------------
    async def decision(self, aid: str, group: str, seq: int) -> bool:
        """Whether the ranks go on after report ``seq``: the same answer for every rank."""
        a = self._assignments.get(aid)
        if a is None:
            return False
        key = (group, seq)
        await self._wait(lambda: key in a.decided or a.cancelled)
        return a.decided.setdefault(key, False)

    async def next(self, sid: str, rank: int, group: str, after: str | None,
                   outcome: str | None) -> tuple | None:
        """A rank's next assignment ``(aid, loop_config, registered checkpoint, recorded epoch)``;
        None: exit. The checkpoint is the last one Train registered for it (a new group
        continues from it), the epoch the last one Tune took (whether a resumed run replays).

        ``after``/``outcome``: the assignment the rank just left and how (``ok``, ``stopped``).
        An assignment goes to a slot's ranks only when all of them are waiting, so they all
        run it (its collectives pair up); it leaves the slot when all of them have left it.
        """
        slot = self._slots.get(sid)
        if slot is None or group in slot.old_groups:
            return None
        if group != slot.group:
            self._new_group(slot, group)
        if after is not None and rank == 0 and outcome == "ok":
            a = self._assignments.get(after)
            if a is not None and a.end is None:
                a.end = ("done", None)
        slot.waiting[rank] = after
        self._settle(slot)
        await self._notify()
        got = await self._wait_release(slot, rank, group)
        return got

    async def _wait_release(self, slot: _Slot, rank: int, group: str):
        def given() -> bool:
            return (self._exiting or slot.retiring or slot.group != group or self._slots.get(slot.sid) is None
                    or rank in slot.released)

        while True:
            await self._wait(given, 5.0)
            if self._exiting or slot.retiring or slot.group != group or self._slots.get(slot.sid) is None:
                return None
            if rank in slot.released:
                slot.released.discard(rank)
                a = self._assignments[slot.current]
                recorded = a.recorded if a.recorded is not None else a.loop_config.get("recorded_epoch")
                return a.aid, a.loop_config, a.checkpoint, recorded

    def _new_group(self, slot: _Slot, group: str) -> None:
        """A worker group starts in the slot: its first, or a restart after a failure."""
        if slot.group is not None:
            slot.old_groups.add(slot.group)
        slot.group, slot.waiting, slot.released = group, {}, set()
        a = self._assignments.get(slot.current) if slot.current else None
        if a is None:
            slot.current = None
            return
        a.failures += 1  # the group died under this assignment
        if a.failures > MAX_FAILURES or a.cancelled:
            if a.end is None:
                a.end = ("error", f"the trial's worker group failed {a.failures} times; the last error:\n"
                                  f"{a.error or 'a worker died (no exception was raised)'}")
            slot.current = None
            self._maybe_drop(a)

    def _settle(self, slot: _Slot) -> None:
        """Once every rank of the slot waits: release its assignment to them, or close it."""
        if len(slot.waiting) < slot.shape.num_workers:
            return
        if slot.current is not None:
            if all(after == slot.current for after in slot.waiting.values()):  # every rank left it
                a = self._assignments.get(slot.current)
                slot.current = None
                if a is not None:
                    if a.end is None and not a.cancelled:  # cannot happen: only a cancelled trial stops
                        a.end = ("error", "the trial ended in its slot without finishing")
                    self._maybe_drop(a)
            else:  # a new group takes over the assignment in flight
                slot.released = set(slot.waiting)
                slot.waiting = {}
                return
        slot.idle_since = time.time()
        self._dispatch()

    def _release(self, slot: _Slot, a: _Assignment) -> None:
        a.slot, slot.current, slot.idle_since = slot.sid, a.aid, None
        if a.released_at is None:
            a.released_at = time.time()
        slot.served += 1
        slot.released = set(slot.waiting)
        slot.waiting = {}

    def _idle(self, slot: _Slot) -> bool:
        return (slot.current is None and not slot.retiring and slot.waiting is not None
                and len(slot.waiting) >= slot.shape.num_workers)

    def _dispatch(self) -> None:
        """Give queued assignments to idle slots of their shape; start slots where there is room."""
        for aid in list(self._queue):
            a = self._assignments[aid]
            slot = next((s for s in self._slots.values() if s.shape == a.shape and self._idle(s)), None)
            if slot is not None:
                self._queue.remove(aid)
                self._release(slot, a)
        waiting_by_shape: dict[Shape, int] = {}
        for aid in self._queue:
            shape = self._assignments[aid].shape
            waiting_by_shape[shape] = waiting_by_shape.get(shape, 0) + 1
        for shape, n in waiting_by_shape.items():
            starting = sum(1 for s in self._slots.values() if s.shape == shape and s.group is None and not s.retiring)
            for _ in range(n - starting):
                if not self._fits(shape):
                    self._retire_one_idle(other_than=shape)
                    break
                self._start_slot(shape)

    def _fits(self, shape: Shape) -> bool:
        """Room on the cluster for one more slot of ``shape`` beside the live ones (whole
        workers per node, as Train's placement group needs them); always room for a first."""
        live = [s for s in self._slots.values() if not s.retiring]
        if not live:
            return True
        need: dict[str, float] = {}
        for s in [*live, None]:
            sh = shape if s is None else s.shape
            for k, v in sh.per_worker.items():
                need[k] = need.get(k, 0.0) + v * sh.num_workers
        nodes = self._nodes()
        for k, v in need.items():
            if sum(r.get(k, 0.0) for r in nodes) + 1e-9 < v:
                return False
        per = shape.per_worker
        fit = sum(int(min(r.get(k, 0.0) / v for k, v in per.items() if v)) for r in nodes)
        return fit >= shape.num_workers

    def _retire_one_idle(self, other_than: Shape) -> None:
        idle = [s for s in self._slots.values() if self._idle(s) and s.shape != other_than]
        if idle:
            self._retire(min(idle, key=lambda s: s.idle_since or 0.0))

    def _retire(self, slot: _Slot) -> None:
        slot.retiring = True  # its ranks get None from next(): fit() returns, Train removes the group

    def _start_slot(self, shape: Shape) -> _Slot:
        sid = f"slot{next(self._ids)}"
        slot = _Slot(sid, shape, run_name=f"slot-{self._token}-{sid}-{shape.label()}", waiting=None,
                     released=set(), old_groups=set())
        self._slots[sid] = slot
        ended = self._launch(slot)
        asyncio.get_running_loop().create_task(self._watch_slot(slot, ended))
        return slot

    # ---- the cluster ----------------------------------------------------------------------
    def _launch(self, slot: _Slot):
        """Start the slot's runner; an awaitable that ends (or raises) when its ``fit()`` does."""
        slot.runner = _SlotRunner.options(num_cpus=0, max_restarts=0).remote()
        return slot.runner.run.remote(self._name, slot.sid, asdict(slot.shape), slot.run_name, self._exp_dir,
                                      self._remote, self._endpoint_url)

    def _kill(self, slot: _Slot) -> None:
        try:
            ray.kill(slot.runner)
        except Exception:  # noqa: BLE001 - gone already
            pass

    def _nodes(self) -> list[dict]:
        """The resources of every live node."""
        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    async def prewarm(self, shape: Shape, n: int) -> int:
        started = 0
        for _ in range(n):
            if started and not self._fits(shape):
                break
            self._start_slot(shape)
            started += 1
        return started

    async def _watch_slot(self, slot: _Slot, ref) -> None:
        """The slot's ``fit()`` ended: a retired slot's did so on purpose; any other errors the
        assignment it held."""
        error = None
        try:
            await ref
        except Exception as exc:  # noqa: BLE001 - its text goes to the trial
            error = f"{type(exc).__name__}: {exc}"
        self._slots.pop(slot.sid, None)
        self._kill(slot)
        a = self._assignments.get(slot.current) if slot.current else None
        if a is not None and a.end is None:
            a.end = ("error", f"its warm slot ended: {error or 'the worker group exited'}"
                              + (f"; the last worker error:\n{a.error}" if a.error else ""))
        if a is not None:
            self._maybe_drop(a)
        if not self._exiting:
            if slot.group is None and not slot.retiring:  # never started a group
                n = self._start_failures[slot.shape] = self._start_failures.get(slot.shape, 0) + 1
                if n >= 2:  # the shape's groups do not start: its queued trials error instead of retrying for ever
                    for aid in [q for q in self._queue if self._assignments[q].shape == slot.shape]:
                        self._queue.remove(aid)
                        self._assignments[aid].end = ("error", f"no worker group of {slot.shape.label()} "
                                                               f"could start: {error}")
            else:
                self._start_failures[slot.shape] = 0
            self._dispatch()
        await self._notify()

    async def _watch(self) -> None:
        """Every second: cancel assignments whose trial went silent, retire slots idle too long."""
        while not self._exiting:
            await asyncio.sleep(1.0)
            now = time.time()
            for a in list(self._assignments.values()):
                if a.end is None and not a.cancelled and now - a.last_ping > ABANDON_S:
                    self._cancel(a)
            for slot in list(self._slots.values()):
                if self._idle(slot) and not self._queue and slot.idle_since and now - slot.idle_since > IDLE_RELEASE_S:
                    self._retire(slot)
            await self._notify()

    async def status(self) -> dict:
        """What the pool holds (tests, the benchmark)."""
        return {"slots": {s.sid: {"shape": s.shape.label(), "current": s.current, "served": s.served,
                                  "group": s.group, "retiring": s.retiring, "run": s.run_name}
                          for s in self._slots.values()},
                "queued": list(self._queue), "assignments": len(self._assignments)}

    async def shutdown(self, timeout_s: float) -> None:
        """Stop every assignment and slot: ranks leave at their next report and exit; runners
        still there after ``timeout_s`` are killed (their controller and workers with them)."""
        self._exiting = True
        for a in self._assignments.values():
            a.cancelled = True
        await self._notify()
        deadline = time.time() + timeout_s
        while self._slots and time.time() < deadline:
            await asyncio.sleep(0.2)
        for slot in list(self._slots.values()):
            self._kill(slot)


SlotPool = ray.remote(Pool)

# ---------------------------------------------------------------------------------- the slot

@ray.remote
class _SlotRunner:
    """Runs one slot's Train ``fit()`` (the slot's controller is this actor's: it dies with it)."""

    def run(self, pool_name: str, sid: str, shape: dict, run_name: str, exp_dir: str, remote: bool,
            endpoint_url: str | None) -> None:
        from raytune_opt.trial import HEALTH_CHECK_INTERVAL_S

        # As for a per-trial run (trial._fit_torch_trainer): a worker's report waits for a poll.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
        slot_trainer(pool_name, sid, Shape(**shape), run_name, exp_dir, remote, endpoint_url).fit()


def slot_trainer(pool_name: str, sid: str, shape: Shape, run_name: str, exp_dir: str, remote: bool = False,
                 endpoint_url: str | None = None):
    """The Train run of slot ``sid``: its workers run :func:`_slot_worker` until the pool lets them go."""
    import ray.train

    from raytune_opt.storage import s3_filesystem
    from raytune_opt.train_backend import TorchBackendConfig
    from raytune_opt.trial import _trainer_class

    use_gpu = shape.gpus_per_worker > 0
    return _trainer_class()(
        train_loop_per_worker=_slot_worker,
        train_loop_config={"pool": pool_name, "slot": sid},
        backend_config=TorchBackendConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=shape.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=shape.per_worker),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=f"{exp_dir}/train",
            storage_filesystem=s3_filesystem(endpoint_url) if remote else None,
            callbacks=[_forward_callback(pool_name, sid)],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # Restart the group whenever a worker fails (the pool bounds each assignment's
            # restarts: MAX_FAILURES); a group that cannot start ends the slot.
            failure_config=ray.train.FailureConfig(max_failures=-1, controller_failure_limit=2),
        ),
    )


def _forward_callback(pool_name: str, sid: str):
    """The slot's Train callback (made where Ray Train is imported: the runner)."""
    from ray.train.v2.api.callback import UserCallback

    class Forward(UserCallback):
        """On the slot's Train controller: rank 0's report (once every rank made it and the
        checkpoint is registered) to the pool, and the workers' exceptions."""

        def __init__(self):
            self._pool = None

        def __getstate__(self) -> dict:
            return {**self.__dict__, "_pool": None}

        def _handle(self):
            if self._pool is None:
                self._pool = ray.get_actor(pool_name, namespace=NAMESPACE)
            return self._pool

        def after_report(self, run_context, metrics, checkpoint) -> None:
            item = dict(metrics[0])
            tag = item.pop(WARM_KEY, None)
            if tag is None:
                return
            aid, group, seq = tag.rsplit("|", 2)
            # Blocks the controller until the trial took the report into Tune, as Ray's own
            # TuneReportCallback does (its queue holds one report).
            ray.get(self._handle().report.remote(aid, group, int(seq), item,
                                                 checkpoint.path if checkpoint else None))

        def after_exception(self, run_context, worker_exceptions) -> None:
            import traceback

            rank, exc = min(worker_exceptions.items())
            text = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else str(exc)
            ray.get(self._handle().error.remote(sid, f"rank {rank}: {text}"))

    return Forward()


def _slot_worker(config: dict) -> None:
    """``train_loop_per_worker`` of a slot: run assignments until the pool says to exit."""
    import ray.train

    from raytune_opt.timeline import mark

    pool = ray.get_actor(config["pool"], namespace=NAMESPACE)
    rank = ray.train.get_context().get_world_rank()
    group = os.environ.get(GROUP_ENV) or uuid.uuid4().hex  # our backend sets it (one id per group start)
    mark("slot_worker_start", rank=rank, slot=config["slot"])
    after, outcome = None, None
    while True:
        got = ray.get(pool.next.remote(config["slot"], rank, group, after, outcome))
        if got is None:
            return
        aid, loop_config, checkpoint, recorded = got
        outcome = _run_assignment(pool, aid, group, loop_config, checkpoint, recorded, rank)
        after = aid


def _resume_path(loop_config: dict, aid: str, registered: str | None) -> str | None:
    """Where an assignment starts: its trial's own ``last.pt`` (the trial found it), or, in a
    group that took over after a failure, the last checkpoint Train registered for it."""
    import ray.train

    from raytune_opt.trial import CHECKPOINT_FILE

    restored = ray.train.get_checkpoint()
    if restored is not None and registered and restored.path == registered:
        return os.path.join(restored.to_directory(), CHECKPOINT_FILE)
    return loop_config["resume_from"]


def _run_assignment(pool, aid: str, group: str, loop_config: dict, checkpoint: str | None, recorded: int | None,
                    rank: int) -> str:
    """One trial on this rank: ``ok`` (it finished) or ``stopped``; a failure raises (Train
    restarts the group)."""
    from raytune_opt.recipe.loop import train
    from raytune_opt.registry import add_code_paths
    from raytune_opt.strategies import strategy_class
    from raytune_opt.timeline import mark
    from raytune_opt.trial import _threads

    mark("assignment_start", rank=rank, aid=aid)
    cfg = loop_config["cfg"]
    add_code_paths(loop_config.get("code_dirs", ()))
    resume = _resume_path(loop_config, aid, checkpoint)
    shared = strategy_class(cfg["train"]["strategy"]).sharded_checkpoints
    session = _slot_session(pool, aid, group, recorded, _threads(cfg), loop_config["checkpoint_root"],
                            shared_checkpoints=shared, store=loop_config["store"], extra=loop_config["extra"])
    try:
        train(cfg, session, spec_sha256=loop_config["spec_sha256"], resume_from=resume)
        outcome = "ok"
    except AssignmentStopped:
        outcome = "stopped"
    finally:
        session.close()
    mark("assignment_end", rank=rank, aid=aid, outcome=outcome)
    return outcome


_KEPT: dict = {}  # this worker process's kept values, across the slot's trials (SlotSession.keep)


def _slot_session_class():
    from raytune_opt.trial import TrainSession

    class _SlotSession(TrainSession):
        """A Train worker's session in a slot: each report tagged for the pool, then the
        ranks' common decision; what the loop keeps stays for the slot's next trials."""

        def __init__(self, pool, aid: str, group: str, recorded: int | None, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pool, self._aid, self._group, self._seq = pool, aid, group, 0
            self._recorded = recorded

        def recorded_epoch(self) -> int | None:
            # The same on every rank (the replay is a report, a collective): the trial's own
            # record when it started, or what Tune took since (a new group after a failure).
            return self._recorded

        def report(self, metrics: dict, checkpoint_dir: str | None, shards=()) -> None:
            self._seq += 1
            super().report({**metrics, WARM_KEY: f"{self._aid}|{self._group}|{self._seq}"}, checkpoint_dir, shards)
            if not ray.get(self._pool.decision.remote(self._aid, self._group, self._seq)):
                raise AssignmentStopped(self._aid)

        def keep(self, key, make):
            if key in _KEPT:
                return _KEPT[key]
            if isinstance(key, tuple) and key and key[0] == "raytune_opt.data":
                for old in [k for k in _KEPT if isinstance(k, tuple) and k and k[0] == "raytune_opt.data"][
                           :max(0, sum(1 for k in _KEPT if isinstance(k, tuple) and k
                                       and k[0] == "raytune_opt.data") - _DATA_KEPT + 1)]:
                    del _KEPT[old]
            value = _KEPT[key] = make()
            return value

    return _SlotSession


def _slot_session(*args, **kwargs):
    """A slot worker's session (its class is made on the worker, where Ray Train is imported)."""
    return _slot_session_class()(*args, **kwargs)
