"""Admission control: the concurrency limit, the FIFO queue, 429 past it, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import APIError
from service.limits import AdmissionController
from service.metrics import Metrics


def _controller(concurrency: int, queue: int) -> AdmissionController:
    return AdmissionController(concurrency, queue, Metrics())


async def test_slots_queue_in_order_then_refuse_with_retry_after() -> None:
    ac = _controller(2, 2)
    a, b = await ac.acquire(), await ac.acquire()
    assert ac.active == 2
    order: list[str] = []

    async def wait(name: str) -> None:
        slot = await ac.acquire()
        order.append(name)
        await asyncio.sleep(0)
        slot.release()

    w1 = asyncio.create_task(wait("first"))
    await asyncio.sleep(0)
    w2 = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    assert ac.queued == 2
    with pytest.raises(APIError) as info:
        await ac.acquire()
    assert info.value.status == 429
    assert int(info.value.headers["Retry-After"]) >= 1
    a.release()
    a.release()  # idempotent: must not free a second slot
    b.release()
    await asyncio.gather(w1, w2)
    assert order == ["first", "second"]
    assert ac.active == 0 and ac.queued == 0


async def test_queue_deadline_gives_504_and_frees_the_place() -> None:
    ac = _controller(1, 1)
    slot = await ac.acquire()
    with pytest.raises(APIError) as info:
        await ac.acquire(timeout_s=0.05)
    assert info.value.status == 504
    assert ac.queued == 0
    slot.release()
    assert ac.active == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    ac = _controller(1, 4)
    slot = await ac.acquire()
    waiter = asyncio.create_task(ac.acquire())
    await asyncio.sleep(0)
    assert ac.queued == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert ac.queued == 0
    slot.release()
    assert ac.active == 0
    again = await asyncio.wait_for(ac.acquire(), 1)
    assert ac.active == 1
    again.release()


async def test_handover_racing_with_cancellation_passes_the_slot_on() -> None:
    ac = _controller(1, 4)
    slot = await ac.acquire()
    first = asyncio.create_task(ac.acquire())
    second = asyncio.create_task(ac.acquire())
    await asyncio.sleep(0)
    slot.release()  # hands the slot to `first`...
    first.cancel()  # ...which gives up before it runs: the slot must go to `second`
    with pytest.raises(asyncio.CancelledError):
        await first
    got = await asyncio.wait_for(second, 1)
    assert ac.active == 1
    got.release()
    assert ac.active == 0


async def test_retry_after_follows_run_latency() -> None:
    ac = _controller(1, 0)
    for _ in range(30):
        ac.record_run(10.0)
    assert ac.retry_after_s() >= 9
    for _ in range(30):
        ac.record_run(0.01)
    assert ac.retry_after_s() == 1
