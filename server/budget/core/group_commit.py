"""Group commit: requests that arrive while a write is running share the next write (and its fsync).

A durable commit costs an fsync, so concurrent writers share one: while a
group is being committed the next requests queue, and the next group takes
them all (up to `max_items` items). Each request still gets its answer only
after its own items are committed, and a failure of one request's batch is
that request's answer alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Writes several requests' batches at once; returns one result (or the exception refusing it) per batch, in order.
CommitGroup = Callable[[list[list[Item]]], Awaitable[Sequence[Result | BaseException]]]


class GroupCommit(Generic[Item, Result]):
    def __init__(self, commit: CommitGroup, *, max_items: int) -> None:
        self._commit, self._max_items = commit, max_items
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, batch: list[Item]) -> Result:
        """Commit `batch` with whatever other batches are waiting; its result once committed, or its error."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._queue, self._loop = asyncio.Queue(), loop
            self._task = loop.create_task(self._commit_groups(self._queue), name="fedcare-budget-group-commit")
        answer: asyncio.Future = loop.create_future()
        self._queue.put_nowait((batch, answer))
        return await answer

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
            self._queue = None

    async def _commit_groups(self, queue: asyncio.Queue) -> None:
        while True:
            group = [await queue.get()]
            size = len(group[0][0])
            while not queue.empty() and size < self._max_items:
                group.append(queue.get_nowait())
                size += len(group[-1][0])
            try:
                results = await self._commit([batch for batch, _ in group])
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error (a 500; clients retry)
                results = [exc] * len(group)
            for (_, answer), result in zip(group, results, strict=False):
                if answer.done():  # the request was cancelled (client gone)
                    continue
                if isinstance(result, BaseException):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
