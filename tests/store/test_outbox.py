"""The outboxes the Redis store's writes wait in: in order, forgotten once delivered,
and (the file) kept across a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aigw.runtime.store import open_store
from aigw.runtime.store.outbox import FileOutbox, Invocation, MemoryOutbox, Outbox, open_outbox


def _write(n: int) -> Invocation:
    return Invocation("record", (f"aigw:rec:r{n}", "aigw:ledger"), (f"r{n}", 1.5 * n, "cost", n))


@pytest.fixture(params=["memory", "file"])
async def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Outbox:
    if request.param == "memory":
        return MemoryOutbox()
    return await FileOutbox.open(tmp_path / "outbox.sqlite")


async def test_writes_come_out_oldest_first_until_delivered(outbox: Outbox) -> None:
    assert not outbox.waiting and await outbox.oldest(10) == []
    for n in range(5):
        await outbox.put(_write(n))
    assert outbox.waiting and await outbox.count() == 5
    first = await outbox.oldest(2)
    assert [invocation for _, invocation in first] == [_write(0), _write(1)]
    await outbox.delivered(first[-1][0])
    rest = await outbox.oldest(10)
    assert [invocation for _, invocation in rest] == [_write(n) for n in (2, 3, 4)]
    await outbox.delivered(rest[-1][0])
    assert await outbox.oldest(10) == [] and not outbox.waiting
    await outbox.aclose()


async def test_a_file_outbox_keeps_its_writes_for_the_next_process(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    first = await FileOutbox.open(path)
    await first.put(_write(1))
    await first.put(_write(2))
    await first.aclose()
    second = await FileOutbox.open(path)
    assert second.waiting
    assert [invocation for _, invocation in await second.oldest(10)] == [_write(1), _write(2)]
    await second.aclose()


async def test_a_full_memory_outbox_drops_its_oldest_write_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = MemoryOutbox(limit=2)
    for n in range(3):
        await outbox.put(_write(n))
    assert [invocation for _, invocation in await outbox.oldest(10)] == [_write(1), _write(2)]
    assert "outbox full" in caplog.text


async def test_an_outbox_file_that_cannot_be_opened_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the outbox's directory would be")
    with caplog.at_level(logging.ERROR, logger="aigw.store"):
        outbox = await open_outbox(blocked / "outbox.sqlite")
    assert isinstance(outbox, MemoryOutbox)
    assert "kept in memory only" in caplog.text


@pytest.mark.parametrize("setting", ["aigw-outbox.sqlite", "memory"])
async def test_a_redis_store_keeps_its_outbox_where_the_settings_say(
    tmp_path: Path, redis_url: str, setting: str
) -> None:
    store = await open_store(redis_url, root=tmp_path, outbox=setting)
    try:
        assert (tmp_path / "aigw-outbox.sqlite").exists() is (setting != "memory")
    finally:
        await store.aclose()
