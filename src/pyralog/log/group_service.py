"""The asyncio adapter over the sans-IO group coordinator and the offset store.

`GroupCoordinator` (groups.py) decides; this module gives it the clock, keeps one Future
per waiting JoinGroup/SyncGroup ticket, wakes at the coordinator's next deadline, and
runs offset commits (sqlite writes, fsynced) on the broker's IO thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode as E

from pyralog.log.errors import StorageError
from pyralog.log.groups import Completion, GroupCoordinator, JoinResult, SyncResult
from pyralog.log.offsets import OffsetCommit, OffsetStore

if TYPE_CHECKING:
    from pyralog.log.context import Context

NO_OFFSET = -1


class GroupService:
    def __init__(self, ctx: Context, path: Path) -> None:
        self._ctx = ctx
        self._path = path
        self.offsets: OffsetStore | None = None
        self.coordinator: GroupCoordinator | None = None
        self._futures: dict[Completion, asyncio.Future[Any]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

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
        ticket = self._coord.join(time.monotonic(), **request)
        result: JoinResult = await self._wait(ticket)
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
        ticket = self._coord.sync(time.monotonic(), **request)
        result: SyncResult = await self._wait(ticket)
        return {
            "error_code": result.error_code,
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name,
            "assignment": result.assignment,
        }

    def heartbeat(self, group_id: str, generation_id: int, member_id: str) -> int:
        code = self._coord.heartbeat(time.monotonic(), group_id, generation_id, member_id)
        self._dispatch()
        return code

    def leave(self, group_id: str, members: list[str]) -> list[int]:
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
        code = self._coord.validate_commit(time.monotonic(), group_id, generation_id, member_id)
        self._dispatch()
        if code != E.none:
            return [code] * len(offsets)
        codes = [
            E.none
            if self._ctx.storage.partition(t, p) is not None
            else E.unknown_topic_or_partition
            for t, p, *_ in offsets
        ]
        store = [OffsetCommit(*o) for o, c in zip(offsets, codes, strict=True) if c == E.none]
        if store:
            assert self.offsets is not None
            await self._ctx.run_io(
                self.offsets.commit_many, group_id, store, int(time.time() * 1000)
            )
        return codes

    def fetch_offsets(
        self, group_id: str, wanted: list[tuple[str, list[int]]] | None
    ) -> list[tuple[str, list[tuple[int, int, str | None, int, int]]]]:
        """Per topic: (partition, offset, metadata, leader epoch, error) for OffsetFetch."""
        assert self.offsets is not None
        if wanted is None:
            committed = self.offsets.fetch_group(group_id)
            topics: dict[str, list[int]] = {}
            for topic, partition in sorted(committed):
                topics.setdefault(topic, []).append(partition)
            wanted = list(topics.items())
        out = []
        for topic, partitions in wanted:
            parts = []
            for partition in partitions:
                found = self.offsets.fetch(group_id, topic, partition)
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
        if self.offsets is not None:
            await self._ctx.run_io(self.offsets.delete_topic, topic)
