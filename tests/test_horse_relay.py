"""The worker's long-lived relay threads (horse reader, heartbeat): one thread serves job
after job, and a relay stuck in an earlier task is replaced, never waited for."""

from __future__ import annotations

import threading

from jobfleet.horse_channel import Relay, Relays


def test_one_relay_thread_serves_task_after_task() -> None:
    relay = Relay("test-relay")
    seen: list[str] = []
    for _ in range(3):
        relay.submit(lambda: seen.append(threading.current_thread().name))
        assert relay.wait(10)
    assert seen == ["test-relay"] * 3
    assert sum(t.name == "test-relay" for t in threading.enumerate()) == 1


def test_a_stuck_relay_is_replaced_and_a_failing_task_does_not_end_it() -> None:
    relays = Relays()
    gate = threading.Event()
    reader, _ = relays.take()
    reader.submit(gate.wait)  # a reader blocked on a pipe that a grandchild holds open
    assert not reader.wait(0.2) and reader.busy()
    fresh, _ = relays.take()
    assert fresh is not reader
    done = threading.Event()
    fresh.submit(lambda: 1 / 0)
    assert fresh.wait(10)
    fresh.submit(done.set)
    assert done.wait(10)
    gate.set()
    assert reader.wait(10) and not reader.busy()
