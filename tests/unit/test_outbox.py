"""The engine's outbox: events reach their asyncio queues only when flushed, in order, in one hand-over."""

from __future__ import annotations

import asyncio
import threading

from gallama.engines.outbox import Outbox


async def test_events_arrive_in_order_only_after_a_flush():
    loop = asyncio.get_running_loop()
    first, second = asyncio.Queue(), asyncio.Queue()
    outbox = Outbox()

    def engine_thread(flush: bool) -> None:
        for n in range(3):
            outbox.put(loop, first, n)
        outbox.put(loop, second, "x")
        if flush:
            outbox.flush()

    worker = threading.Thread(target=engine_thread, args=(False,))
    worker.start()
    worker.join()
    await asyncio.sleep(0.01)
    assert first.empty() and second.empty()  # nothing leaves before the flush

    worker = threading.Thread(target=outbox.flush)
    worker.start()
    worker.join()
    assert [await first.get() for _ in range(3)] == [0, 1, 2]
    assert await second.get() == "x"


def test_a_closed_loop_is_skipped():
    loop = asyncio.new_event_loop()
    loop.close()
    outbox = Outbox()
    outbox.put(loop, asyncio.Queue(), 1)
    outbox.flush()  # no error: nobody waits on a closed loop
    outbox.flush()  # and the event is not retried
    assert outbox._pending == {}
