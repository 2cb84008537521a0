"""A follower's copy loop for one partition: truncate where the logs diverged, then fetch.

Followers use the clients' own protocol: Fetch with a replica id (so the leader reads
past its high watermark and counts the fetch offset as this follower's log end) and
OffsetsForLeaderEpoch (KIP-101) to find where this log and the leader's part ways.

Before fetching under a new leader, and whenever the leader says our offset is out of
range or sends a batch that does not continue our log, the follower asks the leader
where its own latest epoch ended there, and cuts its log at that offset (or where that
epoch ended here, if sooner). So a replica that led, was cut off and wrote records no
one else has drops them before copying the new leader's: logs never fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.batch import CorruptBatch
from pyralog.log.cluster_state import PartitionState
from pyralog.log.connection import Connection, KafkaError
from pyralog.log.errors import StorageError

log = logging.getLogger("pyralog.log.fetcher")

FETCH_WAIT_MS = 500
FETCH_BYTES = 8 * 1024 * 1024
RETRY = (0.05, 0.1, 0.2, 0.5, 1.0)

# Errors that mean "the leadership we were told of is not the leader's": wait for the
# store to say who leads now.
_STALE = {
    E.not_leader_or_follower,
    E.fenced_leader_epoch,
    E.unknown_leader_epoch,
    E.unknown_topic_or_partition,
    E.leader_not_available,
}


class _Diverged(Exception):
    """Our log does not continue into the leader's: truncate, then fetch again."""


class Fetcher:
    def __init__(
        self,
        ctx: Any,  # the broker Context
        live: Any,  # its LivePartition
        state: PartitionState,
        me: int,
        address: Callable[[int], tuple[str, int] | None],
        network: Any,
        ssl: Any = None,  # an ssl.SSLContext: the leaders' listeners use TLS
    ) -> None:
        self.ctx = ctx
        self.live = live
        self.state = state
        self.me = me
        self.address = address
        self.network = network
        self.ssl = ssl
        self.fetches = 0
        self.truncated = 0  # records dropped to follow this leader
        self.task = asyncio.create_task(self._run())

    @property
    def name(self) -> str:
        return self.live.log.name

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    async def _run(self) -> None:
        failures = 0
        conn: Connection | None = None
        needs_truncation = True
        while True:
            try:
                if conn is None or conn.closed:
                    target = self.address(self.state.leader)
                    if target is None:
                        raise ConnectionError(f"no address for broker {self.state.leader}")
                    conn = await Connection.open(
                        *target, network=self.network, client_id=f"replica-{self.me}", ssl=self.ssl
                    )
                if needs_truncation:
                    await self._truncate(conn)
                    needs_truncation = False
                await self._fetch(conn)
                failures = 0
            except asyncio.CancelledError:
                if conn is not None:
                    await conn.close()
                raise
            except _Diverged as e:
                log.info("%s: %s; finding where the logs diverge", self.name, e)
                needs_truncation = True
            except (OSError, ConnectionError, TimeoutError, KafkaError, StorageError) as e:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.info("%s: fetching from broker %s: %s", self.name, self.state.leader, e)
                if conn is not None and not isinstance(e, KafkaError):
                    await conn.close()
                    conn = None
                if isinstance(e, KafkaError) and e.code == E.offset_out_of_range:
                    needs_truncation = True
                await asyncio.sleep(RETRY[min(failures - 1, len(RETRY) - 1)])

    async def _truncate(self, conn: Connection) -> None:
        partition_log = self.live.log
        latest = partition_log.epochs.latest
        if latest is None:
            return  # nothing here yet: nothing to cut
        body = await conn.call(
            23,
            {
                "replica_id": self.me,
                "topics": [
                    {
                        "topic": partition_log.topic,
                        "partitions": [
                            {
                                "partition": partition_log.partition,
                                "current_leader_epoch": self.state.leader_epoch,
                                "leader_epoch": latest.epoch,
                            }
                        ],
                    }
                ],
            },
        )
        answer = body.topics[0].partitions[0]
        if answer.error_code != E.none:
            raise KafkaError(answer.error_code, f"OffsetsForLeaderEpoch {self.name}")
        if answer.leader_epoch < 0:
            # The leader knows no epoch this old (its log starts later): copy afresh.
            cut = partition_log.log_start_offset
        else:
            _, ours = partition_log.end_offset_for_epoch(answer.leader_epoch)
            cut = min(answer.end_offset, ours)
        end = partition_log.log_end_offset
        if cut < end:
            await self.ctx.run_io(partition_log.truncate_to, cut)
            self.truncated += end - cut
            log.warning(
                "%s: truncated %d records (%d..%d) that leader %d at epoch %d does not have",
                self.name,
                end - cut,
                cut,
                end,
                self.state.leader,
                self.state.leader_epoch,
            )

    async def _fetch(self, conn: Connection) -> None:
        partition_log = self.live.log
        offset = partition_log.log_end_offset
        body = await conn.call(
            1,
            {
                "replica_id": self.me,
                "max_wait": FETCH_WAIT_MS,
                "min_bytes": 1,
                "max_bytes": FETCH_BYTES,
                "isolation_level": 0,
                "session_id": 0,
                "session_epoch": -1,
                "topics": [
                    {
                        "topic": partition_log.topic,
                        "partitions": [
                            {
                                "partition": partition_log.partition,
                                "current_leader_epoch": self.state.leader_epoch,
                                "fetch_offset": offset,
                                "log_start_offset": partition_log.log_start_offset,
                                "partition_max_bytes": FETCH_BYTES,
                            }
                        ],
                    }
                ],
                "forgotten_topics_data": [],
                "rack_id": "",
            },
        )
        self.fetches += 1
        if body.error_code != E.none:
            raise KafkaError(body.error_code, f"replica fetch {self.name}")
        answer = body.responses[0].partitions[0]
        if answer.error_code in _STALE:
            await self.ctx.replication.cluster.wait_change(0.5)
            return
        if answer.error_code == E.offset_out_of_range and offset < answer.log_start_offset:
            # Retention went past us on the leader: start over at its log start.
            await self.ctx.run_io(partition_log.restart_at, answer.log_start_offset)
            log.info("%s: starting over at the leader's log start %d", self.name,
                     answer.log_start_offset)  # fmt: skip
            return
        if answer.error_code != E.none:
            raise KafkaError(answer.error_code, f"replica fetch {self.name}@{offset}")
        records = answer.records
        if records:
            try:
                await self.ctx.run_io(partition_log.append_replica, records)
            except CorruptBatch as e:
                raise _Diverged(str(e)) from None
        hw = min(answer.high_watermark, partition_log.log_end_offset)
        if hw > partition_log.high_watermark:
            partition_log.high_watermark = hw
