"""The edge's write-ahead spool: every captured frame is on disk before it counts, until the cloud has it.

``put`` writes the frame to ``spool_dir`` (temporary name, fsync, rename,
fsync of the folder) before it returns, so a frame that was captured survives
a crash of the edge at any later point; the file is deleted only by
``finish``, after the frame's final record (delivered, or dropped with a
reason) is written. The first ``memory_items`` waiting frames are also kept in
memory so that the senders need not read them back; later ones are read from
disk, oldest first, without deleting them.

Frames left by an earlier run in the same folder are picked up first. Frame
ids that already ended are journaled in ``done.log`` so that a restarted edge
neither resends nor recaptures them. A file that cannot be read back is moved
to ``quarantine/`` with a ``.reason`` file beside it and handed to the
consumer as a damaged item, so that it ends with a record too; it never stops
the queue and never touches other frames. One edge process uses a spool
folder at a time (an exclusive ``flock`` on ``lock``).

A spooled frame file is ``SEQ_FRAMEID.frame`` (12 decimal digits, 16 hex
digits) holding ``4-byte big-endian header length | JSON header | payload``.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfqa_core.errors import DataError

log = logging.getLogger("cfqa.edge")
SUFFIX = ".frame"
JOURNAL = "done.log"
QUARANTINE = "quarantine"
_LEN = struct.Struct(">I")
_NAME = re.compile(r"^(\d{1,18})_([0-9a-f]{16})$")


class SpoolFull(DataError):
    """The disk budget of the spool is used up."""


@dataclass
class SpoolItem:
    """One queued frame: its serialized request and its output record so far.

    ``damaged`` is set (with the reason) for a spool file that could not be
    read back; such an item has no payload and its file is already in quarantine.
    """

    seq: int
    payload: bytes
    record: dict[str, Any] = field(default_factory=dict)
    spilled: bool = False
    frame_id: int | None = None
    path: Path | None = None
    size: int = 0
    damaged: str | None = None


def spool_name(seq: int, frame_id: int) -> str:
    """File name of a spooled frame (sorts in capture order)."""
    return f"{seq:012d}_{frame_id & 0xFFFF_FFFF_FFFF_FFFF:016x}{SUFFIX}"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolQueue:
    """Thread-safe write-ahead FIFO; ``get`` blocks until an item arrives or the queue is closed and empty."""

    def __init__(self, memory_items: int = 32, spool_dir: str | Path | None = None,
                 max_disk_bytes: int = 1 << 30, fsync: bool = True) -> None:
        if memory_items < 1:
            raise DataError(f"memory queue needs at least 1 slot, got {memory_items}")
        self.memory_items = memory_items
        self.max_disk_bytes = max_disk_bytes
        self.fsync = fsync
        self._own_dir = spool_dir is None
        self.dir = Path(spool_dir) if spool_dir is not None else Path(tempfile.mkdtemp(prefix="cfqa-spool-"))
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fh = open(self.dir / "lock", "a+")
        except OSError as exc:
            raise DataError(f"cannot use spool folder {self.dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            raise DataError(f"spool folder {self.dir} is in use by another edge process") from None
        self._memory: deque[SpoolItem] = deque()
        self._disk: deque[SpoolItem] = deque()  # on disk only, payload not loaded
        self._disk_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self.spilled_total = 0
        self.recovered = 0
        self.quarantined = 0
        self.pending_ids: set[int] = set()  # frames in the spool (queued or in flight)
        self.finished_ids: set[int] = self._read_journal()
        self._journal = open(self.dir / JOURNAL, "a")
        self._recover()

    # ---- start-up ----------------------------------------------------------------------
    def _read_journal(self) -> set[int]:
        path = self.dir / JOURNAL
        ids: set[int] = set()
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                if line.strip().isdigit():  # a torn last line is simply not a finished frame
                    ids.add(int(line))
        return ids

    def _recover(self) -> None:
        for tmp in self.dir.glob("*.tmp"):  # a put that never returned: the frame was not captured
            tmp.unlink(missing_ok=True)
        found: list[tuple[int, int, Path]] = []
        for path in self.dir.glob(f"*{SUFFIX}"):
            m = _NAME.match(path.stem)
            if m is None:
                item = self._quarantine_path(path, f"spool file name '{path.name}' is not SEQ_FRAMEID{SUFFIX}")
                self._memory.append(item)
                continue
            found.append((int(m.group(1)), int(m.group(2), 16), path))
        found.sort()
        for seq, frame_id, path in found:
            size = path.stat().st_size
            self._disk.append(SpoolItem(seq, b"", {}, spilled=True, frame_id=frame_id, path=path, size=size))
            self._disk_bytes += size
            self.pending_ids.add(frame_id)
            self.recovered += 1
        self._next_seq = (found[-1][0] + 1) if found else 0

    # ---- producer ----------------------------------------------------------------------
    def next_seq(self) -> int:
        with self._cond:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def known(self, frame_id: int) -> bool:
        """True when the frame is already in the spool or has already ended."""
        with self._cond:
            return frame_id in self.pending_ids or frame_id in self.finished_ids

    def is_finished(self, frame_id: int | None) -> bool:
        with self._cond:
            return frame_id in self.finished_ids

    def note_finished(self, frame_ids: Iterable[int], replace: bool = False) -> None:
        """Frames known to have ended elsewhere (e.g. in the output file of an earlier run); their
        spool files, left by a run that died between writing the record and deleting the file, go.
        ``replace``: these are all the finished frames (the output file is the ledger, not the journal)."""
        with self._cond:
            if replace:
                self.finished_ids = set(frame_ids)
            else:
                self.finished_ids.update(frame_ids)
            keep: deque[SpoolItem] = deque()
            for entry in self._disk:
                if entry.frame_id in self.finished_ids and entry.path is not None:
                    entry.path.unlink(missing_ok=True)
                    self._disk_bytes -= entry.size
                    self.pending_ids.discard(entry.frame_id)  # type: ignore[arg-type]
                    self.recovered -= 1
                else:
                    keep.append(entry)
            self._disk = keep

    def put(self, item: SpoolItem) -> str:
        """Write the frame to disk (durably) and enqueue it; returns ``"memory"`` (also cached in
        memory) or ``"disk"`` (to be read back); SpoolFull when the disk budget is exhausted."""
        if item.frame_id is None:
            raise DataError("a spooled frame needs a frame id")
        header = json.dumps({"seq": item.seq, "frame_id": item.frame_id, "record": item.record},
                            separators=(",", ":")).encode()
        blob = _LEN.pack(len(header)) + header + item.payload
        path = self.dir / spool_name(item.seq, item.frame_id)
        with self._cond:
            if self._closed:
                raise DataError("spool queue is closed")
            if self._disk_bytes + len(blob) > self.max_disk_bytes:
                raise SpoolFull(f"spool {self.dir} is full ({self._disk_bytes} of {self.max_disk_bytes} bytes)")
            self._disk_bytes += len(blob)  # reserved before the write, outside the lock
        try:
            self._write(path, blob)
        except OSError as exc:
            with self._cond:
                self._disk_bytes -= len(blob)
            raise SpoolFull(f"cannot write to spool {self.dir}: {exc.strerror or exc}") from None
        item.path, item.size = path, len(blob)
        with self._cond:
            self.pending_ids.add(item.frame_id)
            if not self._disk and len(self._memory) < self.memory_items:
                self._memory.append(item)
                where = "memory"
            else:
                self._disk.append(SpoolItem(item.seq, b"", {}, spilled=True, frame_id=item.frame_id,
                                            path=path, size=len(blob)))
                self.spilled_total += 1
                where = "disk"
            self._cond.notify()
            return where

    def _write(self, path: Path, blob: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(blob)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)  # a crash never leaves a half-written frame under the final name
        if self.fsync:
            _fsync_dir(self.dir)

    def close(self) -> None:
        """No more puts; ``get`` returns None once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- consumer ----------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> SpoolItem | None:
        """The oldest frame; None when closed and empty (or on timeout). Never raises for a bad file."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._memory or self._disk or self._closed, timeout):
                return None
            if self._memory:
                item = self._memory.popleft()
            elif self._disk:
                item = self._load(self._disk.popleft())
            else:
                return None
            # Read ahead so that the disk is read before it is needed; files stay until finish().
            while self._disk and len(self._memory) < self.memory_items:
                self._memory.append(self._load(self._disk.popleft()))
            return item

    def _load(self, entry: SpoolItem) -> SpoolItem:
        path = entry.path
        assert path is not None
        try:
            blob = path.read_bytes()
            (n,) = _LEN.unpack_from(blob)
            if _LEN.size + n > len(blob):
                raise ValueError(f"header length {n} exceeds the file ({len(blob)} bytes)")
            header = json.loads(blob[_LEN.size:_LEN.size + n])
            if not isinstance(header, dict) or not isinstance(header.get("record", {}), dict):
                raise ValueError("header is not a JSON object with a 'record' object")
            if header.get("frame_id") != entry.frame_id:
                raise ValueError(f"header frame id {header.get('frame_id')!r} does not match the file name")
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
            # Deliberately broad: any unreadable file is set aside, the queue goes on.
            self._disk_bytes -= entry.size
            self.pending_ids.discard(entry.frame_id)  # type: ignore[arg-type]
            return self._quarantine_path(path, f"unreadable spool file {path.name}: {exc}", entry)
        record = header.get("record", {})
        return SpoolItem(entry.seq, blob[_LEN.size + n:], record, spilled=True, frame_id=entry.frame_id,
                         path=path, size=entry.size)

    def _quarantine_path(self, path: Path, reason: str, entry: SpoolItem | None = None) -> SpoolItem:
        """Move a bad file to ``quarantine/`` with its reason; a damaged item for the consumer."""
        qdir = self.dir / QUARANTINE
        target = qdir / path.name
        try:
            qdir.mkdir(exist_ok=True)
            os.replace(path, target)
            target.with_name(target.name + ".reason").write_text(reason + "\n")
        except OSError as exc:
            log.error("cannot quarantine %s: %s", path, exc)
        self.quarantined += 1
        log.warning("%s; moved to %s", reason, target)
        # No frame id in the record: the frame did not end, and its image may be captured again.
        record = {"frame_id": None, "spool_frame_id": entry.frame_id if entry else None,
                  "spool_file": path.name, "quarantined": str(target), "latency_ms": {}}
        return SpoolItem(entry.seq if entry else -1, b"", record, spilled=True,
                         frame_id=entry.frame_id if entry else None, damaged=reason)

    def quarantine(self, item: SpoolItem, reason: str) -> None:
        """Set aside the file of an item whose payload turned out unusable (e.g. not a request)."""
        if item.path is None or not item.path.exists():
            return
        with self._cond:
            self._disk_bytes -= item.size
            if item.frame_id is not None:
                self.pending_ids.discard(item.frame_id)
            moved = self._quarantine_path(item.path, reason, item)
        item.record.update(quarantined=moved.record["quarantined"], spool_file=item.path.name,
                           spool_frame_id=item.frame_id, frame_id=None)
        item.path, item.frame_id = None, None

    def finish(self, item: SpoolItem | None = None, frame_id: int | None = None) -> None:
        """The frame has its final record: journal its id, then delete its file."""
        fid = item.frame_id if item is not None else frame_id
        with self._cond:
            if fid is not None:
                self._journal.write(f"{fid}\n")
                self._journal.flush()
                if self.fsync:
                    os.fsync(self._journal.fileno())
                self.finished_ids.add(fid)
                self.pending_ids.discard(fid)
            if item is not None and item.path is not None:
                try:
                    item.path.unlink()
                except FileNotFoundError:
                    pass
                self._disk_bytes -= item.size
                item.path = None

    # ---- state -------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._cond:
            return len(self._memory) + len(self._disk)

    @property
    def disk_items(self) -> int:
        """Frames waiting on disk only (not yet read back into memory)."""
        with self._cond:
            return len(self._disk)

    @property
    def disk_bytes(self) -> int:
        """Bytes of every spool file not yet finished (queued or in flight)."""
        with self._cond:
            return self._disk_bytes

    def cleanup(self) -> None:
        """Release the folder; remove it if this queue created it and no frame is left in it."""
        self._journal.close()
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        finally:
            self._lock_fh.close()
        if self._own_dir and not any(self.dir.glob(f"*{SUFFIX}")) and not (self.dir / QUARANTINE).exists():
            for name in (JOURNAL, "lock"):
                (self.dir / name).unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                pass
