"""Seek before resuming: a fix for a gap Faust 0.15.3 can leave after a rebalance.

When table recovery ends, ``Recovery.on_recovery_completed`` resumes the stream
partitions first and seeks them to their committed offsets second — while the
flow it turned on to read the changelogs is still on. In between, the fetcher
hands the agents records from wherever the consumer stood; the seek then moves
Faust's read offset back, and the records that arrive next are taken for a gap
in the partition (compaction, transaction markers), which Faust counts as acked.
Seen on the worker taking over a partition: internal admission messages 14–16
delivered during the seek, then 18; 17 never reached the agent and the commit
moved past it. ``_resume_streams`` (recovery with no tables) has the same order.

Faust's own account of this race is faust-streaming PR 217 ("if the consumer
starts fetching again before seeking back to the last committed offset, a gap
appears in the processing"), which fixed the order once; 0.15.3 has it back.
:func:`patch` installs both methods with the seek first, the rest unchanged.

This order alone did not end the losses at a hand-over (a consumer could still
stand past the committed offset after the seek): ``streams/offset_guard.py`` is
what checks that every record arrives.
"""
from __future__ import annotations

import asyncio

FAUST_VERSION = "0.15.3"  # the version these copies are taken from (pyproject pins it)
_PATCHED = {"done": False}


async def on_recovery_completed(self, generation_id: int = 0) -> None:
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table],
                                                          self.standbys_for_table[table]))
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id "
                         f"{self.app.consumer_generation_id} param {generation_id}")
        return
    await _seek_then_resume(self, consumer, assignment)
    self.completed.set()
    self.app.flow_control.resume()
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


async def _resume_streams(self, generation_id: int = 0) -> None:
    app = self.app
    consumer = app.consumer
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    if assignment:
        await _seek_then_resume(self, consumer, assignment)
    else:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    self.log.info("Resuming flow...")
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


async def _seek_then_resume(recovery, consumer, assignment) -> None:
    """The stream partitions stay paused (nothing of theirs is fetched) until Faust's
    read offsets and the consumer's positions are both at the committed offsets."""
    if assignment:
        recovery.log.info("Seek stream partitions to committed offsets.")
        await recovery._wait(consumer.perform_seek(),
                             timeout=recovery.app.conf.broker_request_timeout)
    consumer.resume_partitions({tp for tp in assignment
                                if not recovery._is_changelog_tp(tp)})


def patch() -> None:
    """Install the seek-first order into Faust's Recovery (idempotent)."""
    if _PATCHED["done"]:
        return
    import faust
    from faust.tables.recovery import Recovery

    if faust.__version__ != FAUST_VERSION:
        raise RuntimeError(f"streams/resume_order.py copies Recovery methods of faust "
                           f"{FAUST_VERSION}, but {faust.__version__} is installed: "
                           f"compare them before changing the pin")
    Recovery.on_recovery_completed = on_recovery_completed
    Recovery._resume_streams = _resume_streams
    _PATCHED["done"] = True

