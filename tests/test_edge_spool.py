"""The edge's spill queue: FIFO across memory and disk, bounded memory, recovery, disk budget."""
from __future__ import annotations

import threading

import pytest

from edge.spool import SUFFIX, SpoolFull, SpoolItem, SpoolQueue


def _item(q: SpoolQueue, i: int) -> SpoolItem:
    return SpoolItem(q.next_seq(), f"payload-{i}".encode() * 10, {"frame_id": i, "image": f"im{i}.png"})


def test_fifo_across_memory_and_disk(tmp_path) -> None:
    q = SpoolQueue(memory_items=3, spool_dir=tmp_path)
    where = [q.put(_item(q, i)) for i in range(10)]
    assert where == ["memory"] * 3 + ["disk"] * 7
    assert q.disk_items == 7 and len(list(tmp_path.glob(f"*{SUFFIX}"))) == 7 and len(q) == 10
    got = []
    for _ in range(4):
        it = q.get(timeout=1)
        got.append(it)
    # Once anything is on disk, new frames go behind it even when memory has room again.
    assert q.put(_item(q, 10)) == "disk"
    q.close()
    while (it := q.get(timeout=1)) is not None:
        got.append(it)
    assert [it.record["frame_id"] for it in got] == list(range(11))
    assert [it.payload for it in got] == [f"payload-{i}".encode() * 10 for i in range(11)]
    assert [it.spilled for it in got] == [False] * 3 + [True] * 8
    assert q.spilled_total == 8 and q.disk_items == 0 and not list(tmp_path.glob(f"*{SUFFIX}"))


def test_memory_stays_bounded(tmp_path) -> None:
    q = SpoolQueue(memory_items=2, spool_dir=tmp_path)
    for i in range(50):
        q.put(_item(q, i))
    assert len(q._memory) == 2 and q.disk_items == 48
    q.get(timeout=1)
    assert len(q._memory) == 2 and q.disk_items == 47  # refilled from disk, oldest first


def test_frames_left_on_disk_are_recovered_first(tmp_path) -> None:
    first = SpoolQueue(memory_items=1, spool_dir=tmp_path)
    for i in range(5):
        first.put(_item(first, i))
    # The process dies: the frame in memory is gone, the four on disk stay.
    second = SpoolQueue(memory_items=1, spool_dir=tmp_path)
    assert second.recovered == 4
    second.put(_item(second, 99))
    second.close()
    order = []
    while (it := second.get(timeout=1)) is not None:
        order.append(it.record["frame_id"])
    assert order == [1, 2, 3, 4, 99]


def test_disk_budget(tmp_path) -> None:
    q = SpoolQueue(memory_items=1, spool_dir=tmp_path, max_disk_bytes=300)
    q.put(_item(q, 0))
    q.put(_item(q, 1))
    q.put(_item(q, 2))
    with pytest.raises(SpoolFull, match="is full"):
        for i in range(3, 10):
            q.put(_item(q, i))
    assert q.disk_bytes <= 300


def test_get_blocks_until_put_or_close(tmp_path) -> None:
    q = SpoolQueue(memory_items=1, spool_dir=tmp_path)
    assert q.get(timeout=0.05) is None
    results = []
    consumer = threading.Thread(target=lambda: results.append(q.get(timeout=5)))
    consumer.start()
    q.put(_item(q, 7))
    consumer.join(5)
    assert results[0].record["frame_id"] == 7
    closer = threading.Thread(target=lambda: results.append(q.get()))
    closer.start()
    q.close()
    closer.join(5)
    assert results[1] is None and not closer.is_alive()


def test_own_temp_dir_is_removed(tmp_path) -> None:
    q = SpoolQueue(memory_items=1)
    q.put(_item(q, 0))
    q.put(_item(q, 1))
    q.close()
    while q.get(timeout=1) is not None:
        pass
    q.cleanup()
    assert not q.dir.exists()
