"""Dynamic batching: items submitted within a short window of each other run as one call of `run_batch`.

One worker thread per batcher owns the model calls. It blocks for a first item, then keeps collecting until
`window_s` after that item arrived or until `max_batch_size` items are in hand, whichever is first, and calls
`run_batch(payloads)` once. Items whose caller gave up (a cancelled future, e.g. a request that timed out)
are skipped before the call. When `run_batch` raises on a batch of several items, each item is run again
alone, so that one bad input (an image the model cannot take) fails its own request only; the worker goes on.
With `window_s = 0` the worker still takes whatever is already queued, so bursts batch without waiting.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchResult", "BatcherClosed", "DynamicBatcher", "QueueFull"]

P = TypeVar("P")
R = TypeVar("R")

_log = logging.getLogger(__name__)
_STOP = object()


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new items."""


class QueueFull(RuntimeError):
    """More items are waiting than the batcher's `max_queue`."""


class _WrongResultCount(RuntimeError):
    """`run_batch` broke its contract of one result per payload."""


@dataclass(frozen=True)
class BatchResult(Generic[R]):
    """What one item got back: its result, the time it waited in the queue, the duration of the whole model
    call it was part of, and how many items shared that call."""

    value: R
    queue_seconds: float
    model_seconds: float
    batch_size: int


@dataclass
class _Item(Generic[P, R]):
    payload: P
    future: Future[BatchResult[R]]
    enqueued: float


class DynamicBatcher(Generic[P, R]):
    """Collects submitted payloads into batches for `run_batch` (payloads -> one result each, same order).

    `on_batch(size, seconds)` is called after every model call (for metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[list[P]], Sequence[R]],
        window_s: float,
        max_batch_size: int,
        max_queue: int = 256,
        name: str = "batcher",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if window_s < 0 or max_batch_size < 1 or max_queue < 1:
            raise ValueError(
                f"DynamicBatcher needs window_s >= 0, max_batch_size >= 1, max_queue >= 1; got {window_s}, "
                f"{max_batch_size}, {max_queue}"
            )
        self._run_batch = run_batch
        self.window_s = window_s
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    def submit(self, payload: P) -> Future[BatchResult[R]]:
        """Queue `payload`; the future resolves to its `BatchResult` or to the exception its batch raised."""
        with self._lock:
            if self._closed:
                raise BatcherClosed("this model version is being unloaded")
            if self._queue.qsize() >= self.max_queue:
                raise QueueFull(
                    f"{self._queue.qsize()} images are already waiting (max_queue {self.max_queue})"
                )
            future: Future[BatchResult[R]] = Future()
            self._queue.put(_Item(payload, future, time.perf_counter()))
            return future

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking items, finish the ones already queued, and stop the worker (waits up to `timeout`)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout)

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = first.enqueued + self.window_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True  # run what is in hand, then stop
                    break
                batch.append(item)
            self._run(batch)

    def _run(self, batch: list[_Item[P, R]]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        if len(live) == 1:
            self._run_alone(live[0])
            return
        try:
            self._call(live)
        except _WrongResultCount as exc:  # a broken run_batch, not a bad input: no retry
            _log.error("%s", exc)
            for item in live:
                item.future.set_exception(exc)
        except Exception as exc:  # the model failed on this batch: keep the worker alive
            _log.warning("model call on a batch of %d failed (%s); running each item alone", len(live), exc)
            for item in live:
                self._run_alone(item)

    def _run_alone(self, item: _Item[P, R]) -> None:
        """One item in its own call; its failure fails its future only."""
        try:
            self._call([item])
        except Exception as exc:
            _log.exception("model call failed")
            item.future.set_exception(exc)

    def _call(self, items: list[_Item[P, R]]) -> None:
        """One `run_batch` call; resolves the items' futures only when it succeeds."""
        started = time.perf_counter()
        results = list(self._run_batch([item.payload for item in items]))
        if len(results) != len(items):
            raise _WrongResultCount(f"run_batch returned {len(results)} results for {len(items)} inputs")
        seconds = time.perf_counter() - started
        for item, value in zip(items, results, strict=True):
            item.future.set_result(BatchResult(value, started - item.enqueued, seconds, len(items)))
        if self._on_batch is not None:
            try:
                self._on_batch(len(items), seconds)
            except Exception:  # a metrics failure must not stop the worker
                _log.exception("on_batch callback failed")
