"""The asyncio adapter over the sans-IO group coordinator and the offset store.

`GroupCoordinator` (groups.py) decides; this module gives it the clock, keeps one Future
per waiting JoinGroup/SyncGroup ticket, wakes at the coordinator's next deadline, and
runs offset commits (sqlite writes, fsynced) on the broker's IO thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.errors import StorageError
from pyralog.log.group_log import TOPIC as GROUP_TOPIC
from pyralog.log.group_log import GroupLog, PartitionGroups
from pyralog.log.groups import Completion, GroupCoordinator, JoinResult, SyncResult
from pyralog.log.offsets import OffsetCommit, OffsetStore

if TYPE_CHECKING:
    from pyralog.log.context import Context

NO_OFFSET = -1
log = logging.getLogger("pyralog.log.groups")


class GroupService:
    def __init__(self, ctx: Context, path: Path) -> None:
        self._ctx = ctx
        self._path = path
        self.offsets: OffsetStore | None = None
        self.coordinator: GroupCoordinator | None = None
        self._futures: dict[Completion, asyncio.Future[Any]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # In a replicated cluster: the groups' state in __consumer_offsets (group_log.py)
        # instead of the local SQLite file, and only the groups this broker coordinates.
        self.log: GroupLog | None = None
        self._saved: dict[str, int] = {}  # generation last written, per group

    # -- replicated groups ----------------------------------------------------------

    def replicate(self) -> None:
        """Keep group state in the replicated topic from now on (call before joining);
        the local file's groups are not this cluster's."""
        self.log = GroupLog(self._ctx)
        self._coord.drop(self._coord.group_ids())

    def on_role(self, live: Any, leading: bool) -> None:
        """Replication's hook: this broker started or stopped leading `live`."""
        if self.log is None or live.log.topic != GROUP_TOPIC:
            return
        k = live.log.partition
        if leading:
            self.log.led(k, self._restore)
        else:
            self._coord.drop(self.log.lost(k))
            self._dispatch()

    def _restore(self, state: PartitionGroups) -> None:
        now = time.monotonic()
        with_offsets = {g for g, _, _ in state.offsets}
        for group_id, snapshot in state.groups.items():
            self._coord.restore(now, snapshot, offsets=group_id in with_offsets)
            self._saved[group_id] = snapshot.generation
        self._coord.note_offsets(with_offsets - set(state.groups))
        self._dispatch()

    def owner(self, group_id: str) -> int:
        """NONE where this broker may answer for the group, else the client's error."""
        return E.none if self.log is None else self.log.status(group_id)

    async def find(self, group_id: str) -> tuple[int, int | None]:
        """(error, coordinator broker id) for FindCoordinator in a replicated cluster."""
        assert self.log is not None
        code = await self.log.ensure_topic()
        if code != E.none:
            return E.coordinator_not_available, None
        broker = self.log.coordinator_of(group_id)
        return (E.none, broker) if broker is not None else (E.coordinator_not_available, None)

    def start(self) -> None:
        try:
            self.offsets = OffsetStore(self._path)
            groups = self.offsets.groups()
        except sqlite3.Error as e:
            raise StorageError(f"{self._path}: committed offsets unreadable: {e}") from None
        self.coordinator = GroupCoordinator(
            initial_rebalance_delay_ms=self._ctx.config.initial_rebalance_delay_ms,
            groups_with_offsets=groups,
        )
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._timers())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.coordinator is not None:
            self.coordinator.close()
            self._dispatch()
        if self.offsets is not None:
            await self._ctx.run_io(self.offsets.close)

    @property
    def _coord(self) -> GroupCoordinator:
        if self.coordinator is None:
            raise RuntimeError("the group service is not started")
        return self.coordinator

    # -- waiting tickets ------------------------------------------------------------

    def _complete(self) -> None:
        """Answer every ticket the coordinator completed since the last poll."""
        for done in self._coord.poll(time.monotonic()):
            future = self._futures.pop(done, None)
            if future is not None and not future.done():
                future.set_result(done.result)

    def _dispatch(self) -> None:
        self._complete()
        if self._wake is not None:
            self._wake.set()  # the next deadline may have moved

    async def _wait(self, ticket: Completion) -> Any:
        if ticket.done:
            self._dispatch()
            return ticket.result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[ticket] = future
        self._dispatch()
        return await future

    async def _timers(self) -> None:
        assert self._wake is not None
        while True:
            deadline = self._coord.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            self._complete()

    # -- the requests -----------------------------------------------------------------

    async def join(self, **request: Any) -> dict[str, Any]:
        refused = self.owner(request["group_id"])
        if refused != E.none:
            return self._join_answer(JoinResult.failed(E(refused), request["member_id"]))
        ticket = self._coord.join(time.monotonic(), **request)
        result: JoinResult = await self._wait(ticket)
        return self._join_answer(result)

    @staticmethod
    def _join_answer(result: JoinResult) -> dict[str, Any]:
        return {
            "error_code": result.error_code,
            "generation_id": result.generation_id,
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name if result.protocol_name is not None else "",
            "leader": result.leader_id,
            "member_id": result.member_id,
            "members": [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.group_instance_id,
                    "metadata": m.metadata,
                }
                for m in result.members
            ],
        }

    async def sync(self, **request: Any) -> dict[str, Any]:
        group_id = request["group_id"]
        refused = self.owner(group_id)
        if refused != E.none:
            result = SyncResult.failed(E(refused))
        else:
            ticket = self._coord.sync(time.monotonic(), **request)
            result = await self._wait(ticket)
            if result.error_code == E.none and self.log is not None:
                await self._save(group_id)
        return {
            "error_code": result.error_code,
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name,
            "assignment": result.assignment,
        }

    async def _save(self, group_id: str) -> None:
        """Write the group's new generation down before answering its members, so the
        next coordinator carries on with it (once per generation)."""
        assert self.log is not None
        snapshot = self._coord.snapshot(group_id)
        if snapshot is None or self._saved.get(group_id, -1) >= snapshot.generation:
            return
        self._saved[group_id] = snapshot.generation
        code = await self.log.save_group(snapshot)
        if code != E.none:
            self._saved.pop(group_id, None)
            log.warning("group %s generation %d not saved: %s", group_id, snapshot.generation,
                        E(code).name)  # fmt: skip

    def heartbeat(self, group_id: str, generation_id: int, member_id: str) -> int:
        refused = self.owner(group_id)
        if refused != E.none:
            return refused
        code = self._coord.heartbeat(time.monotonic(), group_id, generation_id, member_id)
        self._dispatch()
        return code

    def leave(self, group_id: str, members: list[str]) -> list[int]:
        refused = self.owner(group_id)
        if refused != E.none:
            return [refused] * len(members)
        codes = self._coord.leave(time.monotonic(), group_id, members)
        self._dispatch()
        return codes

    async def commit(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        offsets: list[tuple[str, int, int, str | None, int]],
    ) -> list[int]:
        code = self.owner(group_id)
        if code == E.none:
            code = self._coord.validate_commit(time.monotonic(), group_id, generation_id, member_id)
            self._dispatch()
        if code != E.none:
            return [code] * len(offsets)
        codes = [
            E.none if self._partition_exists(t, p) else E.unknown_topic_or_partition
            for t, p, *_ in offsets
        ]
        store = [OffsetCommit(*o) for o, c in zip(offsets, codes, strict=True) if c == E.none]
        if store and self.log is not None:
            written = await self.log.commit(group_id, store)
            return [written if c == E.none else c for c in codes]
        if store:
            assert self.offsets is not None
            await self._ctx.run_io(
                self.offsets.commit_many, group_id, store, int(time.time() * 1000)
            )
        return codes

    def _partition_exists(self, topic: str, partition: int) -> bool:
        if self._ctx.replication is not None:
            record = self._ctx.replication.cluster.view.topics.get(topic)
            return record is not None and 0 <= partition < len(record.assignment)
        return self._ctx.storage.partition(topic, partition) is not None

    def fetch_offsets(
        self, group_id: str, wanted: list[tuple[str, list[int]]] | None
    ) -> list[tuple[str, list[tuple[int, int, str | None, int, int]]]]:
        """Per topic: (partition, offset, metadata, leader epoch, error) for OffsetFetch."""
        source: Any = self.log if self.log is not None else self.offsets
        assert source is not None
        if wanted is None:
            committed = source.fetch_group(group_id)
            topics: dict[str, list[int]] = {}
            for topic, partition in sorted(committed):
                topics.setdefault(topic, []).append(partition)
            wanted = list(topics.items())
        out = []
        for topic, partitions in wanted:
            parts = []
            for partition in partitions:
                found = source.fetch(group_id, topic, partition)
                if found is None:
                    parts.append((partition, NO_OFFSET, "", -1, int(E.none)))
                else:
                    offset, metadata, epoch = found
                    parts.append((partition, offset, metadata, epoch, int(E.none)))
            out.append((topic, parts))
        return out

    def list_groups(self) -> list[tuple[str, str, str]]:
        return self._coord.list_groups()

    def describe(self, group_id: str) -> dict[str, Any]:
        refused = self.owner(group_id)
        if refused != E.none:
            return {"error_code": refused, "group_id": group_id, "group_state": "",
                    "protocol_type": "", "protocol_data": "", "members": [],
                    "authorized_operations": -(2**31)}  # fmt: skip
        d = self._coord.describe(group_id)
        return {
            "error_code": d.error_code,
            "group_id": d.group_id,
            "group_state": str(d.state),
            "protocol_type": d.protocol_type,
            "protocol_data": d.protocol_name,
            "members": [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.group_instance_id,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "member_metadata": m.metadata,
                    "member_assignment": m.assignment,
                }
                for m in d.members
            ],
            "authorized_operations": -(2**31),
        }

    async def topic_deleted(self, topic: str) -> None:
        if self.log is not None:
            await self.log.topic_deleted(topic)
        elif self.offsets is not None:
            await self._ctx.run_io(self.offsets.delete_topic, topic)
