"""The warm-slot pool's protocol (raytune_opt.warm_slots.Pool), driven without Ray.

The pool's methods are what a slot's ranks, its Train controller and the Tune trials call;
here a test plays all of them in one asyncio loop, with a fake cluster (``_launch`` hands
back a future the test ends, ``_nodes`` a fixed list). What a wrong answer here costs in a
sweep: ranks that run different trials (their collectives pair with the wrong partner and
hang), a stopped trial whose workers train on, a trial that never ends.
"""

from __future__ import annotations

import asyncio

import pytest

from raytune_opt import warm_slots as ws

SHAPE = ws.Shape(num_workers=2, cpus_per_worker=1.0, gpus_per_worker=0.0, strategy="ddp")
HALF = ws.Shape(num_workers=2, cpus_per_worker=0.5, gpus_per_worker=0.0, strategy="ddp")


class FakePool(ws.Pool):
    def __init__(self, nodes=({"CPU": 2.0},)):
        super().__init__("/exp", False, None, "pool")
        self.launched: list = []  # (slot, future that ends its fit())
        self.nodes = list(nodes)

    def _launch(self, slot):
        fut = asyncio.get_running_loop().create_future()
        self.launched.append((slot, fut))
        return fut

    def _kill(self, slot) -> None:
        pass

    def _nodes(self) -> list[dict]:
        return self.nodes


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def released(pool: FakePool, sid: str, group: str, after=None, outcome=None, ranks=(0, 1)) -> list:
    """Every rank of a group asks for its next assignment; what each gets."""
    tasks = [asyncio.create_task(pool.next(sid, r, group, after, outcome)) for r in ranks]
    return await asyncio.gather(*tasks)


async def epoch(pool: FakePool, aid: str, group: str, seq: int, ack: bool = True) -> tuple:
    """One report: rank 0's through the controller, every rank's decision; the trial takes it
    (``ack``: its tune.report returned) or does not."""
    reported = asyncio.create_task(pool.report(aid, group, seq, {"epoch": seq}, f"/ckpt/{seq}"))
    kind, payload = await pool.take(aid, None, 1.0)
    assert kind == "report" and payload["item"] == {"epoch": seq}
    decisions = [asyncio.create_task(pool.decision(aid, group, seq)) for _ in range(2)]
    await settle()
    assert not any(d.done() for d in decisions), "ranks went on before the trial took the report into Tune"
    if ack:
        assert await pool.take(aid, payload["key"], 0.01) == ("wait", None)
    return reported, decisions, payload["key"]


def test_both_ranks_get_the_trial_only_together_and_the_trial_gets_every_report_then_done():
    async def go():
        pool = FakePool()
        aid = await pool.submit("t1", SHAPE, {"cfg": 1})
        (slot, _), = pool.launched
        first = asyncio.create_task(pool.next(slot.sid, 0, "g1", None, None))
        await settle()
        assert not first.done(), "rank 0 got an assignment while rank 1 was not there to run it with it"
        second = await pool.next(slot.sid, 1, "g1", None, None)
        assert await first == second == (aid, {"cfg": 1}, None, None)
        for seq in (1, 2):
            reported, decisions, _ = await epoch(pool, aid, "g1", seq)
            await reported
            assert [await d for d in decisions] == [True, True]
        after = asyncio.create_task(released(pool, slot.sid, "g1", aid, "ok"))
        assert await pool.take(aid, None, 1.0) == ("done", None)
        # The slot is idle again: the next trial goes to the same ranks.
        aid2 = await pool.submit("t2", SHAPE, {"cfg": 2})
        assert [got[0] for got in await after] == [aid2, aid2]
        assert len(pool.launched) == 1

    run(go())


def test_a_trial_is_told_once_how_long_it_waited_for_a_slot(monkeypatch):
    """What it waited (the slot's start, another trial's turn) is left out of the trial's
    seconds by ``run_trial``: it comes with the first report, once."""
    now = [100.0]
    monkeypatch.setattr(ws.time, "time", lambda: now[0])

    async def one_report(aid: str, seq: int):
        reported = asyncio.create_task(pool.report(aid, "g1", seq, {"epoch": seq}, None))
        kind, payload = await pool.take(aid, None, 1.0)
        assert kind == "report" and payload["item"] == {"epoch": seq}
        assert await pool.take(aid, payload["key"], 0.01) == ("wait", None)  # Tune took it
        await reported
        return payload.get("waited_s")

    async def go():
        first = await pool.submit("t1", SHAPE, {})
        second = await pool.submit("t2", SHAPE, {})  # no room for a second slot: it waits
        (slot, _), = pool.launched
        now[0] = 112.0  # the slot's group is up 12 s later
        await released(pool, slot.sid, "g1")
        assert [await one_report(first, 1), await one_report(first, 2)] == [12.0, None]
        now[0] = 130.0  # the first trial ends; the second, submitted at 100, gets the slot
        assert [got[0] for got in await released(pool, slot.sid, "g1", first, "ok")] == [second, second]
        assert await one_report(second, 1) == 30.0

    pool = FakePool()
    run(go())


def test_a_stopped_trial_stops_every_rank_after_the_same_report_and_frees_its_slot():
    async def go():
        pool = FakePool()
        aid = await pool.submit("t1", SHAPE, {})
        waiting = await pool.submit("t2", SHAPE, {})  # no room for a second slot: it waits
        (slot, _), = pool.launched
        await released(pool, slot.sid, "g1")
        reported, decisions, _ = await epoch(pool, aid, "g1", 1, ack=False)
        # Tune stopped the trial while it handed the report over (its tune.report exited).
        await pool.cancel(aid)
        await reported
        late = await pool.decision(aid, "g1", 1)  # a rank that asks after the cancel
        assert [await d for d in decisions] + [late] == [False, False, False]
        got = await released(pool, slot.sid, "g1", aid, "stopped")
        assert [g[0] for g in got] == [waiting, waiting]
        assert aid not in pool._assignments  # forgotten: its trial is gone

    run(go())


def test_a_rank_that_asks_late_gets_the_decision_the_others_got_even_after_a_stop():
    # Tune took epoch 1 (rank 0 goes on), then stopped the trial before the slow rank 1 asked:
    # rank 1 must go on too, or the ranks part ways (rank 0 trains epoch 2 alone and hangs).
    async def go():
        pool = FakePool()
        aid = await pool.submit("t1", SHAPE, {})
        (slot, _), = pool.launched
        await released(pool, slot.sid, "g1")
        reported = asyncio.create_task(pool.report(aid, "g1", 1, {"epoch": 1}, None))
        kind, payload = await pool.take(aid, None, 1.0)
        await pool.take(aid, payload["key"], 0.01)  # tune.report returned
        assert await pool.decision(aid, "g1", 1) is True
        await pool.cancel(aid)
        assert await pool.decision(aid, "g1", 1) is True  # rank 1, late
        assert await pool.decision(aid, "g1", 2) is False  # both stop after the next report
        await reported

    run(go())


def test_a_trial_cancelled_before_any_slot_took_it_never_reaches_one():
    async def go():
        pool = FakePool()
        running = await pool.submit("t1", SHAPE, {})
        gone = await pool.submit("t2", SHAPE, {})
        nxt = await pool.submit("t3", SHAPE, {})
        (slot, _), = pool.launched
        await released(pool, slot.sid, "g1")
        await pool.cancel(gone)
        tasks = asyncio.create_task(released(pool, slot.sid, "g1", running, "ok"))
        assert await pool.take(running, None, 1.0) == ("done", None)
        assert [g[0] for g in await tasks] == [nxt, nxt]

    run(go())


def test_a_new_worker_group_continues_the_trial_from_its_registered_checkpoint_until_failures_run_out():
    async def go():
        pool = FakePool()
        aid = await pool.submit("t1", SHAPE, {})
        nxt = await pool.submit("t2", SHAPE, {})
        (slot, _), = pool.launched
        await released(pool, slot.sid, "g0")
        reported, decisions, _ = await epoch(pool, aid, "g0", 1)
        await reported
        await pool.error(slot.sid, "rank 1: Traceback ... RuntimeError: boom")
        # Train restarts the group MAX_FAILURES times: each new group gets the same trial and
        # the checkpoint Train registered for it (a late call from a dead group gets nothing).
        for restart in range(1, ws.MAX_FAILURES + 1):
            got = await released(pool, slot.sid, f"g{restart}")
            assert got == [(aid, {}, "/ckpt/1", 1)] * 2, restart
            assert await pool.next(slot.sid, 0, f"g{restart - 1}", None, None) is None
        # One failure more: the trial errors with the worker's traceback; the slot goes on.
        got = await released(pool, slot.sid, "g9")
        assert [g[0] for g in got] == [nxt, nxt]
        kind, text = await pool.take(aid, None, 1.0)
        assert kind == "error" and "RuntimeError: boom" in text and f"failed {ws.MAX_FAILURES + 1} times" in text

    run(go())


def test_a_trial_of_another_shape_gets_its_own_slot_and_an_idle_slot_makes_room_for_it():
    async def go():
        pool = FakePool(nodes=[{"CPU": 2.0}])
        first = await pool.submit("t1", SHAPE, {})
        (slot, fit), = pool.launched
        await released(pool, slot.sid, "g1")
        idle = asyncio.create_task(released(pool, slot.sid, "g1", first, "ok"))
        await pool.take(first, None, 1.0)
        other = await pool.submit("t2", HALF, {})
        # 2 CPUs: the idle 2x1-CPU slot holds both; it is retired, its ranks exit...
        assert await idle == [None, None] and len(pool.launched) == 1
        fit.set_result(None)  # ...its fit() returns
        await settle()
        (slot2, _) = pool.launched[1]
        assert slot2.shape == HALF
        assert [g[0] for g in await released(pool, slot2.sid, "h1")] == [other, other]

    run(go())


def test_two_slots_of_one_shape_where_the_cluster_holds_two():
    async def go():
        pool = FakePool(nodes=[{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 2.0}])
        for t in ("t1", "t2", "t3"):
            await pool.submit(t, SHAPE, {})
        assert len(pool.launched) == 2  # 4 CPUs, 2 a slot; a group may span nodes

    run(go())


def test_a_slot_whose_group_cannot_start_errors_its_trials():
    async def go():
        pool = FakePool()
        aid = await pool.submit("t1", SHAPE, {})
        for attempt in range(2):
            slot, fit = pool.launched[attempt]
            fit.set_exception(RuntimeError("worker group start timed out"))
            await settle()
        kind, text = await pool.take(aid, None, 1.0)
        assert kind == "error" and "worker group start timed out" in text, text
        assert len(pool.launched) == 2  # not retried for ever

    run(go())


def test_a_trial_that_went_silent_is_cancelled(monkeypatch):
    monkeypatch.setattr(ws, "ABANDON_S", 0.3)

    async def go():
        pool = FakePool()
        await pool.ready()  # starts the watchdog
        aid = await pool.submit("t1", SHAPE, {})
        (slot, _), = pool.launched
        await released(pool, slot.sid, "g1")
        decision = asyncio.create_task(pool.decision(aid, "g1", 1))
        await asyncio.sleep(1.6)  # no ping, no take: its trial actor died
        assert decision.done() and decision.result() is False
        pool._exiting = True

    run(go())


@pytest.mark.parametrize("cfg,label", [
    ({"resources": {"num_workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0}, "train": {"strategy": "ddp"}},
     "2x1cpu-ddp"),
    ({"resources": {"num_workers": 4, "cpus_per_worker": 2, "gpus_per_worker": 1}, "train": {"strategy": "deepspeed"}},
     "4x2cpu-1gpu-deepspeed"),
])
def test_a_shape_is_read_from_the_trial_config(cfg, label):
    assert ws.Shape.of(cfg).label() == label


def test_a_slot_runner_its_controller_and_a_warm_trial_never_import_torch(tmp_path):
    # Only the slot's workers train: the runner builds the trainer, Train's controller unpickles
    # the run's context and the slot's callback, the Tune trial relays (torch's import is ~2 s
    # of CPU each: benchmarks/ddp_startup.py).
    from tests.test_trial import _run

    blob = tmp_path / "controller.pkl"
    built = _run(f"""
import sys, ray.cloudpickle as cp
from raytune_opt import trial, warm_slots
t = warm_slots.slot_trainer("pool", "slot0", warm_slots.Shape(2, 1.0, 0.0, "ddp"), "slot-x", "/x")
open({str(blob)!r}, "wb").write(cp.dumps((t.train_run_context, t._create_default_callbacks(), t.run_config.callbacks)))
print("torch" in sys.modules)
""")
    assert built == "False"
    assert _run(f"import sys, pickle; pickle.loads(open({str(blob)!r}, 'rb').read()); "
                "print('torch' in sys.modules)") == "False"
