"""The edge's write-ahead spool: every frame on disk until finished, FIFO, recovery, journal, quarantine."""
from __future__ import annotations

import threading

import pytest

from cfqa_core.errors import DataError
from cfqa_edge.spool import JOURNAL, QUARANTINE, SUFFIX, SpoolFull, SpoolItem, SpoolQueue, spool_name


def _item(q: SpoolQueue, i: int) -> SpoolItem:
    return SpoolItem(q.next_seq(), f"payload-{i}".encode() * 10, {"frame_id": 1000 + i, "image": f"im{i}.png"},
                     frame_id=1000 + i)


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.glob(f"*{SUFFIX}"))


def _crash(q: SpoolQueue) -> None:
    """What the kernel does to a killed process: its files close, its lock goes."""
    q._journal.close()
    q._lock_fh.close()


def test_write_ahead_fifo_across_memory_and_disk(tmp_path) -> None:
    q = SpoolQueue(memory_items=3, spool_dir=tmp_path)
    where = [q.put(_item(q, i)) for i in range(10)]
    assert where == ["memory"] * 3 + ["disk"] * 7
    # Every frame is on disk before put returns, also the three kept in memory.
    assert _files(tmp_path) == [spool_name(i, 1000 + i) for i in range(10)]
    assert q.disk_items == 7 and len(q) == 10
    got = [q.get(timeout=1) for _ in range(4)]
    # Reading ahead loads frames into memory but deletes nothing.
    assert len(_files(tmp_path)) == 10
    assert q.put(_item(q, 10)) == "disk"  # once anything waits on disk, new frames queue behind it
    q.close()
    while (it := q.get(timeout=1)) is not None:
        got.append(it)
    assert [it.frame_id for it in got] == [1000 + i for i in range(11)]
    assert [it.payload for it in got] == [f"payload-{i}".encode() * 10 for i in range(11)]
    assert [it.record["image"] for it in got] == [f"im{i}.png" for i in range(11)]
    assert [it.spilled for it in got] == [False] * 3 + [True] * 8
    assert len(_files(tmp_path)) == 11 and q.spilled_total == 8
    for it in got:
        q.finish(it)
    assert _files(tmp_path) == [] and q.disk_bytes == 0
    assert (tmp_path / JOURNAL).read_text().split() == [str(1000 + i) for i in range(11)]


def test_memory_stays_bounded(tmp_path) -> None:
    q = SpoolQueue(memory_items=2, spool_dir=tmp_path, fsync=False)
    for i in range(50):
        q.put(_item(q, i))
    assert len(q._memory) == 2 and q.disk_items == 48
    q.get(timeout=1)
    assert len(q._memory) == 2 and q.disk_items == 47  # refilled from disk, oldest first


def test_a_killed_edge_loses_nothing_and_resumes_in_order(tmp_path) -> None:
    first = SpoolQueue(memory_items=1, spool_dir=tmp_path)
    for i in range(5):
        first.put(_item(first, i))
    done = first.get(timeout=1)
    in_flight = first.get(timeout=1)  # taken by a sender, not yet answered
    first.finish(done)
    with pytest.raises(DataError, match="in use by another edge process"):
        SpoolQueue(spool_dir=tmp_path)
    (tmp_path / "000000000099_00000000000003e8.tmp").write_bytes(b"half a frame")  # a put that never returned
    _crash(first)
    second = SpoolQueue(memory_items=1, spool_dir=tmp_path)
    assert second.recovered == 4 and not list(tmp_path.glob("*.tmp"))
    assert second.finished_ids == {1000} and second.known(1000) and second.known(1004) and not second.known(7)
    second.put(SpoolItem(second.next_seq(), b"new", {"image": "new.png"}, frame_id=7))
    second.close()
    order = []
    while (it := second.get(timeout=1)) is not None:
        order.append((it.frame_id, it.payload[:9]))
    assert order[0] == (in_flight.frame_id, b"payload-1")  # the frame in flight at the crash comes back first
    assert order == [(1001, b"payload-1"), (1002, b"payload-2"), (1003, b"payload-3"), (1004, b"payload-4"),
                     (7, b"new")]


def test_frames_finished_elsewhere_are_not_resent(tmp_path) -> None:
    first = SpoolQueue(memory_items=1, spool_dir=tmp_path)
    for i in range(3):
        first.put(_item(first, i))
    _crash(first)
    second = SpoolQueue(spool_dir=tmp_path)
    # The output file of the dead run already holds a final record of frame 1001.
    second.note_finished({1001})
    assert second.recovered == 2 and _files(tmp_path) == [spool_name(0, 1000), spool_name(2, 1002)]
    second.close()
    assert [it.frame_id for it in iter(lambda: second.get(timeout=1), None)] == [1000, 1002]


def test_damaged_files_are_quarantined_with_a_record_and_valid_frames_kept(tmp_path) -> None:
    first = SpoolQueue(memory_items=1, spool_dir=tmp_path)
    for i in range(4):
        first.put(_item(first, i))
    _crash(first)
    (tmp_path / spool_name(1, 1001)).write_bytes(b"\x00\x00\xff\xffnot json")  # header longer than the file
    (tmp_path / spool_name(2, 1002)).write_bytes(b"")  # truncated to nothing
    (tmp_path / f"holiday-photo{SUFFIX}").write_bytes(b"anything")  # a name that is no frame
    q = SpoolQueue(memory_items=1, spool_dir=tmp_path)
    q.close()
    items = list(iter(lambda: q.get(timeout=1), None))
    damaged = [it for it in items if it.damaged]
    valid = [it for it in items if not it.damaged]
    assert [it.frame_id for it in valid] == [1000, 1003]
    assert [it.payload for it in valid] == [b"payload-0" * 10, b"payload-3" * 10]
    assert sorted(it.record["spool_file"] for it in damaged) == sorted(
        [spool_name(1, 1001), spool_name(2, 1002), f"holiday-photo{SUFFIX}"])
    assert all(it.record["frame_id"] is None for it in damaged)  # not ended: the image may be captured again
    assert {it.record["spool_frame_id"] for it in damaged} == {1001, 1002, None}
    assert "header length 65535 exceeds the file" in next(it.damaged for it in damaged if "1001" in str(it.record))
    qdir = tmp_path / QUARANTINE
    assert sorted(p.name for p in qdir.glob(f"*{SUFFIX}")) == sorted(it.record["spool_file"] for it in damaged)
    assert "not SEQ_FRAMEID" in (qdir / f"holiday-photo{SUFFIX}.reason").read_text()
    assert (qdir / spool_name(1, 1001)).read_bytes() == b"\x00\x00\xff\xffnot json"  # kept as it was
    assert q.quarantined == 3 and _files(tmp_path) == [spool_name(0, 1000), spool_name(3, 1003)]
    assert not q.known(1001)


def test_disk_budget(tmp_path) -> None:
    q = SpoolQueue(memory_items=1, spool_dir=tmp_path, max_disk_bytes=500, fsync=False)
    with pytest.raises(SpoolFull, match="is full"):
        for i in range(10):
            q.put(_item(q, i))
    assert 0 < q.disk_bytes <= 500
    assert sum(p.stat().st_size for p in tmp_path.glob(f"*{SUFFIX}")) == q.disk_bytes
    first = q.get(timeout=1)
    q.finish(first)  # space comes back only when a frame is finished
    assert q.put(_item(q, 5)) == "disk"


def test_get_blocks_until_put_or_close(tmp_path) -> None:
    q = SpoolQueue(memory_items=1, spool_dir=tmp_path, fsync=False)
    assert q.get(timeout=0.05) is None
    results = []
    consumer = threading.Thread(target=lambda: results.append(q.get(timeout=5)))
    consumer.start()
    q.put(_item(q, 7))
    consumer.join(5)
    assert results[0].frame_id == 1007
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
    while (it := q.get(timeout=1)) is not None:
        q.finish(it)
    q.cleanup()
    assert not q.dir.exists()
