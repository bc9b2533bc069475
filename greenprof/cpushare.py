"""How much of the machine's CPU time this process used: the share by which a machine-wide
counter (a RAPL package, DRAM, psys) is apportioned to it, as Kepler and Scaphandre do.

    share = this process's CPU time / the machine's busy CPU time, over the same interval

The machine's busy time comes from the aggregate ``cpu`` line of ``/proc/stat``, in clock ticks
(10 ms): busy = user + nice + system + irq + softirq; idle, iowait and steal (time the hypervisor
gave to other guests) are not busy time of this machine, and ``guest`` time is already inside
``user``. :class:`CpuTimes` also carries this process's ticks (``/proc/self/stat`` utime +
stime), quantised like the machine's, for the whole-window "other load" figure. The meter takes
each interval's share with this process's nanosecond clock as the numerator, over spans widened
until the ticks are many (greenprof.meter: ``Meter._cpu_shares``).

Thread CPU clocks (``pthread_getcpuclockid``, nanosecond resolution) weigh concurrent windows of
one process against each other (see greenprof.meter).

Paths are module-level seams so tests can point them at fake files. Nothing is read at import.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

PROC_STAT = "/proc/stat"
PROC_SELF_STAT = "/proc/self/stat"


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU seconds at one instant."""

    process_s: float  # this process, all its threads, user + system
    machine_busy_s: float  # every CPU of the machine (or VM), busy


def _ticks_per_s() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100.0


class CpuTimesReader:
    """Reads :class:`CpuTimes`; keeps both files open and re-reads them with ``pread``.

    ``read()`` returns None when /proc is not there (not Linux, a locked-down container): the
    caller then says the share could not be checked instead of guessing it.
    """

    def __init__(self, stat_path: str | None = None, self_stat_path: str | None = None) -> None:
        self._stat_path = stat_path or PROC_STAT
        self._self_path = self_stat_path or PROC_SELF_STAT
        self._hz = _ticks_per_s()
        self._fds: tuple[int, int] | None = None
        self.why_not = ""
        try:
            a = os.open(self._stat_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            self.why_not = f"cannot read {self._stat_path} ({e.strerror or e})"
            return
        try:
            b = os.open(self._self_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            os.close(a)
            self.why_not = f"cannot read {self._self_path} ({e.strerror or e})"
            return
        self._fds = (a, b)
        if self.read() is None:
            self.close()

    @property
    def available(self) -> bool:
        return self._fds is not None

    def read(self) -> CpuTimes | None:
        fds = self._fds
        if fds is None:
            return None
        try:
            head = os.pread(fds[0], 1024, 0).split(b"\n", 1)[0].split()
            mine = os.pread(fds[1], 2048, 0)
        except OSError as e:
            self.why_not = f"reading /proc failed ({e.strerror or e})"
            return None
        try:
            if head[0] != b"cpu":
                raise ValueError("no aggregate cpu line")
            f = [int(x) for x in head[1:]] + [0] * 10
            user, nice, system, _idle, _iowait, irq, softirq = f[:7]
            busy = user + nice + system + irq + softirq
            # the comm field may hold spaces and parentheses: split after the last ')'
            rest = mine[mine.rindex(b")") + 2:].split()
            utime, stime = int(rest[11]), int(rest[12])
        except (ValueError, IndexError) as e:
            self.why_not = f"unexpected /proc/stat format ({e})"
            return None
        hz = self._hz
        return CpuTimes((utime + stime) / hz, busy / hz)

    def close(self) -> None:
        fds, self._fds = self._fds, None
        if fds:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def thread_cpu_clock(thread_ident: int):
    """A function returning the CPU seconds of the thread ``thread_ident`` (a
    ``threading.get_ident()`` value of this process), or None where the OS has no per-thread
    CPU clocks."""
    getid = getattr(time, "pthread_getcpuclockid", None)
    if getid is None:
        return None
    try:
        clk = getid(thread_ident)
        time.clock_gettime(clk)
    except (OSError, ValueError, OverflowError):
        return None

    def read() -> float:
        try:
            return time.clock_gettime(clk)
        except OSError:  # the thread has exited
            return float("nan")

    return read


__all__ = ["CpuTimes", "CpuTimesReader", "thread_cpu_clock", "PROC_STAT", "PROC_SELF_STAT"]
