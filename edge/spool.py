"""A FIFO of frames waiting for the cloud: bounded in memory, spilling to disk beyond that.

While the cloud is unreachable the edge keeps capturing; the first
``memory_items`` frames wait in memory and later ones are written to
``spool_dir`` one file per frame, so a long outage costs disk, not memory,
and nothing is lost. Order is kept: once anything is on disk, new frames go to
disk too, and frames move back to memory oldest first as the queue drains.
Files left by an earlier run in the same folder are picked up (oldest first).

A spooled frame file is ``4-byte big-endian header length | JSON header | payload``.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfqa_core.errors import DataError

SUFFIX = ".frame"
_LEN = struct.Struct(">I")


class SpoolFull(DataError):
    """The disk budget of the spool is used up."""


@dataclass
class SpoolItem:
    """One queued frame: its serialized request and its output record so far."""

    seq: int
    payload: bytes
    record: dict[str, Any] = field(default_factory=dict)
    spilled: bool = False


class SpoolQueue:
    """Thread-safe FIFO; ``get`` blocks until an item arrives or the queue is closed and empty."""

    def __init__(self, memory_items: int = 32, spool_dir: str | Path | None = None,
                 max_disk_bytes: int = 1 << 30) -> None:
        if memory_items < 1:
            raise DataError(f"memory queue needs at least 1 slot, got {memory_items}")
        self.memory_items = memory_items
        self.max_disk_bytes = max_disk_bytes
        self._own_dir = spool_dir is None
        self.dir = Path(spool_dir) if spool_dir is not None else Path(tempfile.mkdtemp(prefix="cfqa-spool-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._memory: deque[SpoolItem] = deque()
        self._disk: deque[tuple[int, Path, int]] = deque()  # (seq, path, size)
        self._disk_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self.spilled_total = 0
        self.recovered = 0
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            seq = int(path.stem)
            size = path.stat().st_size
            self._disk.append((seq, path, size))
            self._disk_bytes += size
            self.recovered += 1
        self._next_seq = (self._disk[-1][0] + 1) if self._disk else 0

    # ---- producer ----------------------------------------------------------------------
    def next_seq(self) -> int:
        with self._cond:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def put(self, item: SpoolItem) -> str:
        """Enqueue; returns ``"memory"`` or ``"disk"``; SpoolFull when the disk budget is exhausted."""
        with self._cond:
            if self._closed:
                raise DataError("spool queue is closed")
            if not self._disk and len(self._memory) < self.memory_items:
                self._memory.append(item)
                where = "memory"
            else:
                self._spill(item)
                where = "disk"
            self._cond.notify()
            return where

    def _spill(self, item: SpoolItem) -> None:
        header = json.dumps({"seq": item.seq, "record": item.record}, separators=(",", ":")).encode()
        blob = _LEN.pack(len(header)) + header + item.payload
        if self._disk_bytes + len(blob) > self.max_disk_bytes:
            raise SpoolFull(f"spool {self.dir} is full ({self._disk_bytes} of {self.max_disk_bytes} bytes)")
        path = self.dir / f"{item.seq:012d}{SUFFIX}"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)  # a crash never leaves a half-written frame under the final name
        self._disk.append((item.seq, path, len(blob)))
        self._disk_bytes += len(blob)
        self.spilled_total += 1

    def close(self) -> None:
        """No more puts; ``get`` returns None once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- consumer ----------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> SpoolItem | None:
        """The oldest frame; None when closed and empty (or on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._memory or self._disk or self._closed, timeout):
                return None
            if self._memory:
                item = self._memory.popleft()
            elif self._disk:
                item = self._load_oldest()
            else:
                return None
            # Refill memory from disk so that the disk is read ahead of need, oldest first.
            while self._disk and len(self._memory) < self.memory_items:
                self._memory.append(self._load_oldest())
            return item

    def _load_oldest(self) -> SpoolItem:
        seq, path, size = self._disk.popleft()
        blob = path.read_bytes()
        (n,) = _LEN.unpack_from(blob)
        header = json.loads(blob[_LEN.size:_LEN.size + n])
        path.unlink()
        self._disk_bytes -= size
        return SpoolItem(seq, blob[_LEN.size + n:], header.get("record", {}), spilled=True)

    # ---- state -------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._cond:
            return len(self._memory) + len(self._disk)

    @property
    def disk_items(self) -> int:
        with self._cond:
            return len(self._disk)

    @property
    def disk_bytes(self) -> int:
        with self._cond:
            return self._disk_bytes

    def cleanup(self) -> None:
        """Remove the spool folder if this queue created it and it is empty."""
        if self._own_dir and not self._disk:
            try:
                self.dir.rmdir()
            except OSError:
                pass
