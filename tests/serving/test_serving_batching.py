"""DynamicBatcher: window and size limits, failures confined to their item, cancellation, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from instaseg.serving.batching import BatcherClosed, DynamicBatcher, QueueFull


class Recorder:
    """A run_batch that doubles its inputs and remembers every batch it was called with."""

    def __init__(self, delay_s: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.started = threading.Event()

    def __call__(self, payloads: list[int]) -> list[int]:
        self.started.set()
        self.batches.append(list(payloads))
        time.sleep(self.delay_s)
        if self.fail_on in payloads:
            raise RuntimeError(f"cannot process {self.fail_on}")
        return [2 * p for p in payloads]


def test_items_within_the_window_share_one_call() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, window_s=0.3, max_batch_size=8)
    futures = [batcher.submit(i) for i in range(5)]
    results = [f.result(timeout=5) for f in futures]
    batcher.close()
    assert [r.value for r in results] == [0, 2, 4, 6, 8]
    assert run.batches == [[0, 1, 2, 3, 4]]
    assert all(r.batch_size == 5 for r in results)
    # The first item waited for the window; the queue time is measured up to the model call.
    assert results[0].queue_seconds >= 0.25
    assert results[0].model_seconds == results[4].model_seconds


def test_max_batch_size_splits_a_burst() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, window_s=0.2, max_batch_size=3)
    futures = [batcher.submit(i) for i in range(7)]
    assert [f.result(timeout=5).value for f in futures] == [2 * i for i in range(7)]
    batcher.close()
    assert [len(b) for b in run.batches] == [3, 3, 1]
    assert [p for b in run.batches for p in b] == list(range(7))


def test_batch_size_one_turns_batching_off() -> None:
    run = Recorder()
    batcher = DynamicBatcher(run, window_s=0.05, max_batch_size=1)
    futures = [batcher.submit(i) for i in range(4)]
    assert [f.result(timeout=5).batch_size for f in futures] == [1, 1, 1, 1]
    batcher.close()
    assert run.batches == [[0], [1], [2], [3]]


def test_zero_window_still_takes_what_is_already_queued() -> None:
    run = Recorder(delay_s=0.2)
    batcher = DynamicBatcher(run, window_s=0.0, max_batch_size=8)
    first = batcher.submit(0)
    assert run.started.wait(5)  # the worker is busy with item 0 ...
    rest = [batcher.submit(i) for i in range(1, 4)]  # ... while these queue up
    first.result(timeout=5)
    assert [f.result(timeout=5).value for f in rest] == [2, 4, 6]
    batcher.close()
    assert run.batches == [[0], [1, 2, 3]]


def test_a_failing_batch_is_run_again_item_by_item_so_only_the_bad_item_fails() -> None:
    run = Recorder(fail_on=13)
    batcher = DynamicBatcher(run, window_s=0.1, max_batch_size=3)
    bad, good, other = batcher.submit(13), batcher.submit(1), batcher.submit(2)
    with pytest.raises(RuntimeError, match="cannot process 13"):
        bad.result(timeout=5)
    assert [good.result(timeout=5).value, other.result(timeout=5).value] == [2, 4]
    assert good.result().batch_size == 1
    assert batcher.submit(5).result(timeout=5).value == 10  # the worker goes on
    batcher.close()
    assert run.batches == [[13, 1, 2], [13], [1], [2], [5]]


def test_wrong_number_of_results_is_an_error_not_a_hang() -> None:
    batcher = DynamicBatcher(lambda payloads: [0], window_s=0.1, max_batch_size=4)
    futures = [batcher.submit(i) for i in range(2)]
    for future in futures:
        with pytest.raises(RuntimeError, match="1 results for 2 inputs"):
            future.result(timeout=5)
    batcher.close()


def test_cancelled_items_are_skipped() -> None:
    run = Recorder(delay_s=0.3)
    batcher = DynamicBatcher(run, window_s=0.0, max_batch_size=1)
    busy = batcher.submit(0)
    assert run.started.wait(5)
    abandoned = batcher.submit(1)
    assert abandoned.cancel()  # the caller gave up (request timeout) while it was still queued
    kept = batcher.submit(2)
    assert kept.result(timeout=5).value == 4
    busy.result(timeout=5)
    batcher.close()
    assert [1] not in run.batches


def test_queue_limit_refuses_new_items() -> None:
    run = Recorder(delay_s=0.3)
    batcher = DynamicBatcher(run, window_s=0.0, max_batch_size=1, max_queue=2)
    first = batcher.submit(0)
    assert run.started.wait(5)
    queued = [batcher.submit(1), batcher.submit(2)]
    with pytest.raises(QueueFull, match="max_queue 2"):
        batcher.submit(3)
    assert [f.result(timeout=5).value for f in [first, *queued]] == [0, 2, 4]
    batcher.close()


def test_close_finishes_queued_items_then_refuses_new_ones() -> None:
    run = Recorder(delay_s=0.1)
    batcher = DynamicBatcher(run, window_s=0.0, max_batch_size=2)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close(timeout=10)
    assert [f.result(timeout=0).value for f in futures] == [0, 2, 4, 6, 8]
    with pytest.raises(BatcherClosed):
        batcher.submit(9)


def test_on_batch_reports_size_and_duration() -> None:
    seen: list[tuple[int, float]] = []
    batcher = DynamicBatcher(
        Recorder(delay_s=0.05), window_s=0.2, max_batch_size=4, on_batch=lambda n, s: seen.append((n, s))
    )
    for future in [batcher.submit(i) for i in range(3)]:
        future.result(timeout=5)
    batcher.close()
    assert len(seen) == 1 and seen[0][0] == 3 and seen[0][1] >= 0.05


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size >= 1"):
        DynamicBatcher(lambda p: p, window_s=0.01, max_batch_size=0)
