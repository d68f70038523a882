"""Dynamic batching: requests that arrive together share one forward pass.

The reward server turns every request row into one :class:`_Item` (its payload, its cost in
tokens and an ``asyncio.Future`` for its result) and hands the rows to :class:`DynamicBatcher`.
One worker task, on the server's event loop, takes items in arrival order and groups them:

* the first item of a batch is the oldest one waiting (the worker sleeps while none is);
* more items join while the batch stays within ``max_batch_size`` items and within
  ``max_batch_tokens`` *padded* tokens: ``len(batch) * max(item.tokens)``, the size of the
  (B, L) tensor the forward pass computes (padding costs as much as real tokens);
* the worker takes what is already queued at once, and waits for more for at most
  ``max_wait_ms`` after it took the batch's first item (0: never waits);
* an item that would break the token budget starts the next batch (arrival order is kept).

The batch's ``forward`` (a blocking function ``payloads -> results``, one result per payload)
runs in a worker thread (``asyncio.to_thread``), so the event loop keeps accepting and parsing
requests while the model computes; batches run one at a time. When a forward raises and the
batch had more than one item, each item is run again alone, so one bad row fails only its own
request. An item whose future is already done when it is taken (its client went away and the
request cancelled it) is skipped: nobody waits for it, nothing is computed for it.

Nothing here knows about HTTP, torch or reward models: the batcher is tested on its own
(tests/test_serve.py) with a forward that records the batches it is given.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchLimits:
    """How items are grouped (see the module docstring)."""

    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    max_queue: int = 4096  # items waiting (not yet in a batch); more is refused with QueueFull

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_batch_tokens < 1 or self.max_queue < 1:
            raise ValueError(f"batch limits must be positive: {self}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


@dataclass
class BatchStats:
    """Counters since start: ``forward_passes`` counts calls of ``forward`` (retries included)."""

    submitted: int = 0  # items accepted
    computed: int = 0  # items whose result was computed (in a successful forward)
    cancelled: int = 0  # items skipped because their request had gone
    failed: int = 0  # items whose forward raised (also after the one-by-one retry)
    forward_passes: int = 0
    failed_passes: int = 0
    largest_batch: int = 0
    refused: int = 0  # items refused because the queue was full


class QueueFull(Exception):
    """The batcher holds ``max_queue`` items already: the caller should answer 503."""


@dataclass
class _Item:
    payload: Any
    tokens: int
    future: asyncio.Future


class DynamicBatcher:
    """Groups submitted items into batches for ``forward`` (see the module docstring).

    ``forward(payloads: list) -> list`` is called in a worker thread with 1..max_batch_size
    payloads and must return one result per payload, in order. Use::

        batcher = DynamicBatcher(forward, BatchLimits(max_batch_size=16))
        await batcher.start()                  # on the event loop that will submit
        results = await batcher.run(payloads, tokens)
        await batcher.stop()
    """

    def __init__(self, forward: Callable[[list], list], limits: BatchLimits | None = None):
        self.forward = forward
        self.limits = limits or BatchLimits()
        self.stats = BatchStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._inflight: list[_Item] = []  # the batch being computed

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        if self._worker is not None:
            raise RuntimeError("the batcher is already running")
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="reward-batcher")

    async def stop(self) -> None:
        """Stop the worker; items still queued fail with RuntimeError (a batch being computed finishes
        in its thread, but its results are dropped)."""
        if self._worker is None:
            return
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None
        left = self._inflight + list(self._queue)
        self._inflight, self._queue = [], collections.deque()
        self._fail(left, RuntimeError("the reward server is shutting down"))

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting those whose request has gone)."""
        return sum(not item.future.done() for item in self._queue)

    def snapshot(self) -> dict:
        """The counters and the current queue length, JSON-ready."""
        return {**asdict(self.stats), "queued": self.queued}

    # ------------------------------------------------------------------ submitting

    def submit(self, payloads: Sequence, tokens: Sequence[int]) -> list[asyncio.Future]:
        """Queue the items (all or none) and return one future per item. Raises QueueFull."""
        if self._worker is None or self._arrived is None:
            raise RuntimeError("the batcher is not running (call start() first)")
        if len(payloads) != len(tokens):
            raise ValueError(f"{len(payloads)} payloads for {len(tokens)} token counts")
        if len(self._queue) + len(payloads) > self.limits.max_queue:
            self.stats.refused += len(payloads)
            raise QueueFull(f"the server is busy ({len(self._queue)} rows queued, limit {self.limits.max_queue})")
        loop = asyncio.get_running_loop()
        futures = []
        for payload, n in zip(payloads, tokens, strict=True):
            fut = loop.create_future()
            self._queue.append(_Item(payload, int(n), fut))
            futures.append(fut)
        self.stats.submitted += len(payloads)
        self._arrived.set()
        return futures

    async def run(self, payloads: Sequence, tokens: Sequence[int]) -> list:
        """Submit and wait for every result; if the caller is cancelled, its queued items are
        cancelled too (the worker skips them). The first failing item's exception is raised."""
        futures = self.submit(payloads, tokens)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for f in futures:
                f.cancel()  # no-op on finished ones

    # ------------------------------------------------------------------ the worker

    def _pop_live(self) -> _Item | None:
        """The oldest queued item whose future is still pending (cancelled ones are dropped)."""
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                return item
            self.stats.cancelled += 1
        return None

    async def _wait_arrival(self, timeout: float | None) -> bool:
        """Wait until something is queued; False when ``timeout`` (seconds) passed first."""
        assert self._arrived is not None
        while not self._queue:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return bool(self._queue)
        return True

    async def _collect(self) -> list[_Item]:
        """The next batch (never empty): see the grouping rules in the module docstring."""
        lim = self.limits
        first = None
        while first is None:
            await self._wait_arrival(None)
            first = self._pop_live()
        batch, width = [first], first.tokens
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lim.max_wait_ms / 1000.0
        while len(batch) < lim.max_batch_size:
            if not self._queue:
                left = deadline - loop.time()
                if left <= 0 or not await self._wait_arrival(left):
                    break
            item = self._queue[0]
            if item.future.done():
                self._queue.popleft()
                self.stats.cancelled += 1
                continue
            new_width = max(width, item.tokens)
            if new_width * (len(batch) + 1) > lim.max_batch_tokens:
                break  # it starts the next batch
            self._queue.popleft()
            batch.append(item)
            width = new_width
        return batch

    async def _forward(self, items: list[_Item]) -> list | BaseException:
        self.stats.forward_passes += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        try:
            results = await asyncio.to_thread(self.forward, [i.payload for i in items])
            if len(results) != len(items):
                raise RuntimeError(f"forward returned {len(results)} results for {len(items)} inputs")
            return results
        except Exception as e:  # the server answers 500 for these items; the worker goes on
            self.stats.failed_passes += 1
            return e

    @staticmethod
    def _fail(items: list[_Item], error: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _settle(self, items: list[_Item], results: list | BaseException) -> None:
        for k, item in enumerate(items):
            if item.future.done():  # its client went away while the batch was computed
                continue
            if isinstance(results, BaseException):
                self.stats.failed += 1
                item.future.set_exception(results)
            else:
                self.stats.computed += 1
                item.future.set_result(results[k])

    async def _work(self) -> None:
        while True:
            try:
                self._inflight = await self._collect()
                batch = self._inflight
                results = await self._forward(batch)
                if isinstance(results, BaseException) and len(batch) > 1:
                    log.warning("a batch of %d failed (%s: %s); running its items one by one",
                                len(batch), type(results).__name__, results)
                    for item in batch:
                        if not item.future.done():
                            self._settle([item], await self._forward([item]))
                else:
                    self._settle(batch, results)
                self._inflight = []
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug here must not leave the batch's requests waiting forever
                log.exception("reward batcher: unexpected error; continuing")
                self._fail(self._inflight, e)
                self._inflight = []
                await asyncio.sleep(0.01)
