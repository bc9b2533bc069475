"""The RAPL watcher: a tiny process that keeps reading powercap counters while we cannot.

A RAPL counter wraps at ``max_energy_range_uj``; a wrap is seen only if the counter is read at
least once per lap (``range / max power``: 0.7 s for a 20 J range at 30 W, ~43 s for AMD's
2^32 uJ at 100 W). The meter's sampler is a Python thread, so a C call that holds the GIL (a
first onnxruntime run, a long model load) stops it. This process does not share our GIL: it
reads every zone's ``energy_uj`` at a tenth of the shortest lap and publishes, per zone, the last
raw value, the wrap-corrected cumulative value and the ``CLOCK_MONOTONIC`` time of that read
(system-wide on Linux, so both processes compare times) in shared memory.

The parent (``rapl.py``) then resolves any read of its own against the latest record::

    cumulative = record.cum + ((raw_now - record.raw) mod range)

which is exact while the record is younger than one lap, however long our interpreter was busy.

This file runs as a script (``python -S -I rapl_watch.py ...``, started by ``_RaplWatch`` in
``rapl.py`` with ``subprocess.Popen``: the parent, maybe multi-threaded, is never forked
without an exec), so it imports nothing but the standard library; the parent imports it as a
module for the record format (:func:`read_record_seq`, :func:`write_record` for the seeds).
It never prints, ignores Ctrl-C (the parent decides when it ends), and exits when its stdin
(the parent's pipe) reaches end of file or when its parent changes (the parent died and it was
re-parented). Importing it has no side effect.

Record layout, one 64-byte slot per zone, all unsigned 64-bit little endian::

    seq, raw, cum, t_ns, missed, gap_ns, reserved, check

``seq`` is a sequence counter (odd while a write is in progress); ``check`` a hash of the other
fields, so that a reader that raced a writer (or saw its stores out of order on a weakly ordered
CPU) retries instead of using a torn record. ``missed`` counts the watcher's own reads that came
more than one lap after its previous read of the zone (it was starved or stopped: a wrap may
have been missed) and ``gap_ns`` is the latest such gap.
"""

from __future__ import annotations

import os
import struct
import sys
import time

SLOT = 64
#: seq, raw, cum, t_ns, missed, gap_ns, reserved, check
RECORD = struct.Struct("<8Q")
_SEQ = struct.Struct("<Q")
_MASK = (1 << 64) - 1


def _check(seq: int, raw: int, cum: int, t_ns: int, missed: int, gap_ns: int) -> int:
    # A sum of the fields times distinct odd constants, mod 2^64: a record torn in one field
    # never passes, torn in several practically never; the offset fails an all-zero (never
    # written) slot. Cheap (~0.3 us in CPython).
    return (0x2545F4914F6CDD1D + seq * 0x9E3779B97F4A7C15 + raw * 0xC2B2AE3D27D4EB4F
            + cum * 0x165667B19E3779F9
            + t_ns * 0xD6E8FEB86659FD93 + missed * 0xFF51AFD7ED558CCD
            + gap_ns * 0xC4CEB9FE1A85EC53) & _MASK


def write_record(buf, slot: int, seq: int, raw: int, cum: int, t_ns: int, missed: int,
                 gap_ns: int) -> int:
    """Publish one record (seqlock: odd while writing); returns the new, even ``seq``."""
    off = slot * SLOT
    _SEQ.pack_into(buf, off, seq + 1)
    RECORD.pack_into(buf, off, seq + 1, raw, cum, t_ns, missed, gap_ns, 0,
                     _check(seq + 2, raw, cum, t_ns, missed, gap_ns))
    _SEQ.pack_into(buf, off, seq + 2)
    return seq + 2


def read_seq(buf, slot: int) -> int:
    """The slot's sequence number alone: a reader that validated the record of this ``seq``
    may keep using it until the number changes."""
    return _SEQ.unpack_from(buf, slot * SLOT)[0]


def read_record_seq(buf, slot: int) -> tuple[int, tuple[int, int, int, int, int]] | None:
    """``(seq, (raw, cum, t_ns, missed, gap_ns))`` of one zone, or None if no consistent record
    could be read in a few tries (a writer kept racing us: practically never)."""
    off = slot * SLOT
    for _ in range(8):
        seq, raw, cum, t_ns, missed, gap_ns, _r, chk = RECORD.unpack_from(buf, off)
        if (not seq & 1 and chk == _check(seq, raw, cum, t_ns, missed, gap_ns)
                and _SEQ.unpack_from(buf, off)[0] == seq):
            return seq, (raw, cum, t_ns, missed, gap_ns)
    return None


def read_record(buf, slot: int) -> tuple[int, int, int, int, int] | None:
    """``(raw, cum, t_ns, missed, gap_ns)`` of one zone, or None (see :func:`read_record_seq`)."""
    got = read_record_seq(buf, slot)
    return None if got is None else got[1]


def poll_period_s(wrap_s: list[float]) -> float:
    """A tenth of the shortest lap, between 2 ms and 0.5 s."""
    return min(0.5, max(0.002, min(wrap_s, default=5.0) / 10))


def _watch(argv: list[str]) -> None:
    """``argv``: shm fd, period (s), parent pid, then (path, range_uj, wrap_ns) per zone."""
    import mmap
    import select
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    shm_fd, period, ppid = int(argv[0]), float(argv[1]), int(argv[2])
    rest = argv[3:]
    zones = [(rest[i], int(rest[i + 1]), int(rest[i + 2])) for i in range(0, len(rest), 3)]
    if os.getppid() != ppid:
        return
    buf = mmap.mmap(shm_fd, max(SLOT * len(zones), 1))
    os.close(shm_fd)
    fds, state = [], []
    for slot, (path, range_uj, wrap_ns) in enumerate(zones):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            fd = -1  # the parent's own reads fall back to in-process tracking once ours age
        rec = read_record(buf, slot)  # the parent's seed: its last read before starting us
        if rec is None:  # a zone the parent closed before starting us: not ours to watch
            if fd >= 0:
                os.close(fd)
            fd, rec = -1, (0, 0, 0, 0, 0)
        fds.append(fd)
        seq = RECORD.unpack_from(buf, slot * SLOT)[0]
        state.append([seq, *rec])  # seq, raw, cum, t_ns, missed, gap_ns
    period_ns = int(period * 1e9)
    next_ns = time.monotonic_ns()
    stdin = 0  # the parent's pipe: our lifeline
    while True:
        for slot, fd in enumerate(fds):
            if fd < 0:
                continue
            path, range_uj, wrap_ns = zones[slot]
            st = state[slot]
            t = time.monotonic_ns()
            try:
                raw = int(os.pread(fd, 32, 0))
            except (OSError, ValueError):
                continue  # the parent sees the same failure on its own read
            if raw < 0 or raw > range_uj:
                continue
            gap = t - st[3]
            if gap > wrap_ns:  # we were stopped for more than a lap: a wrap may have been missed
                st[4] += 1
                st[5] = gap
            st[2] += (raw - st[1]) % range_uj
            st[1], st[3] = raw, t
            st[0] = write_record(buf, slot, st[0], raw, st[2], t, st[4], st[5])
        if os.getppid() != ppid:
            return
        next_ns += period_ns
        now = time.monotonic_ns()
        if next_ns < now:  # fell behind (starved): no burst of catch-up reads
            next_ns = now + period_ns
        ready, _, _ = select.select([stdin], [], [], (next_ns - now) / 1e9)
        if ready and not os.read(stdin, 4096):
            return  # the parent closed our pipe, or died


def main(argv: list[str]) -> int:
    try:
        _watch(argv)
    except BaseException:  # never print, never linger: the parent falls back on its own
        pass
    return 0


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
