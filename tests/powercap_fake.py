"""Fake Linux powercap trees for tests, with the same files the kernel exposes.

Three layouts:

* ``"sysfs"`` (default, like a real machine): zone directories live nested under
  ``<base>/devices/virtual/powercap/<control-type>/...`` and ``<base>/class/powercap`` (the root
  given to ``discover``) lists the control types and *every* zone, subzones included, flat as
  relative symlinks. Zone directories also carry a ``subsystem`` symlink back to the root, a
  loop the scanner must not follow.
* ``"nested"``: plain directories, subzones inside their package (``root/intel-rapl:0/intel-rapl:0:0``).
* ``"flat"``: plain directories, every zone directly under the root, nothing nested.

Counter values are written in place (same inode), so a collector that keeps its file descriptor
open sees them. :class:`CounterWriter` keeps one counter moving at a fixed power from a separate
process, so it goes on moving (and wrapping) while the test process is blocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: What Intel client and server parts report (about 262 kJ).
DEFAULT_RANGE_UJ = 262_143_328_850

LAYOUTS = ("sysfs", "nested", "flat")


def _split(zone_id: str) -> tuple[str, list[str]]:
    """"intel-rapl:0:1" -> ("intel-rapl", ["0", "1"])."""
    prefix, *ids = zone_id.split(":")
    if not ids:
        raise ValueError(f"not a zone id: {zone_id!r}")
    return prefix, ids


@dataclass
class FakeZone:
    zone_id: str  # "intel-rapl:0:1"
    path: Path  # the real directory holding the attribute files
    name: str | None

    @property
    def energy_path(self) -> Path:
        return self.path / "energy_uj"

    def set_energy(self, uj: int | str) -> None:
        """Write the counter in place (truncate + write on the same inode, like sysfs content
        changing under an open file descriptor)."""
        self.write("energy_uj", f"{uj}\n" if isinstance(uj, int) else uj)

    def write(self, filename: str, content: str) -> None:
        with open(self.path / filename, "w") as f:  # "w" keeps the inode
            f.write(content)

    def remove(self, filename: str) -> None:
        (self.path / filename).unlink()


@dataclass
class FakePowercap:
    """A fake powercap tree under ``base``; pass :attr:`root` to ``discover``."""

    base: Path
    layout: str = "sysfs"
    zones: dict[str, FakeZone] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        if self.layout == "sysfs":
            return self.base / "class" / "powercap"
        return self.base / "powercap"

    @property
    def devices(self) -> Path:
        return self.base / "devices" / "virtual" / "powercap"

    def _real_dir(self, zone_id: str) -> Path:
        prefix, ids = _split(zone_id)
        if self.layout == "flat":
            return self.root / zone_id
        chain = [f"{prefix}:{':'.join(ids[: i + 1])}" for i in range(len(ids))]
        top = self.devices / prefix if self.layout == "sysfs" else self.root
        return top.joinpath(*chain)

    def _ensure_control_type(self, prefix: str) -> None:
        if self.layout != "sysfs":
            return
        ctl = self.devices / prefix
        if ctl.exists():
            return
        ctl.mkdir(parents=True)
        (ctl / "enabled").write_text("1\n")
        os.symlink(os.path.relpath(self.root, ctl), ctl / "subsystem")
        os.symlink(os.path.relpath(ctl, self.root), self.root / prefix)

    def add_zone(
        self,
        zone_id: str,
        name: str | None,
        *,
        energy_uj: int | str = 0,
        max_energy_range_uj: int | str | None = DEFAULT_RANGE_UJ,
        max_power_uw: int | None = None,
        power_limit_uw: int | None = None,
        enabled: bool = True,
    ) -> FakeZone:
        """Create one zone directory with the kernel's files. ``name=None`` or
        ``max_energy_range_uj=None`` leave that file out; strings are written verbatim."""
        prefix, _ = _split(zone_id)
        self._ensure_control_type(prefix)
        real = self._real_dir(zone_id)
        real.mkdir(parents=True, exist_ok=False)
        zone = FakeZone(zone_id, real, name)
        if name is not None:
            zone.write("name", f"{name}\n")
        zone.set_energy(energy_uj)
        if max_energy_range_uj is not None:
            zone.write("max_energy_range_uj", f"{max_energy_range_uj}\n")
        zone.write("enabled", "1\n" if enabled else "0\n")
        if max_power_uw is not None or power_limit_uw is not None:
            zone.write("constraint_0_name", "long_term\n")
            zone.write("constraint_0_time_window_us", "999424\n")
        if max_power_uw is not None:
            zone.write("constraint_0_max_power_uw", f"{max_power_uw}\n")
        if power_limit_uw is not None:
            zone.write("constraint_0_power_limit_uw", f"{power_limit_uw}\n")
        if self.layout == "sysfs":
            os.symlink(os.path.relpath(self.root, real), real / "subsystem")
            os.symlink(os.path.relpath(real, self.root), self.root / zone_id)
        self.zones[zone_id] = zone
        return zone

    def zone(self, zone_id: str) -> FakeZone:
        return self.zones[zone_id]

    def set_energy(self, zone_id: str, uj: int | str) -> None:
        self.zones[zone_id].set_energy(uj)

    def path_of(self, zone_id: str) -> str:
        """The path ``discover`` reports for the zone in this layout (root-relative)."""
        if self.layout == "nested":
            return str(self._real_dir(zone_id))
        return str(self.root / zone_id)


def build(
    base: Path,
    *,
    sockets: int = 1,
    dram: bool = True,
    core: bool = False,
    uncore: bool = False,
    psys: bool = False,
    mmio: bool = False,
    layout: str = "sysfs",
    max_energy_range_uj: int = DEFAULT_RANGE_UJ,
    max_power_uw: int | None = None,
    power_limit_uw: int | None = 125_000_000,
) -> FakePowercap:
    """A typical machine: ``intel-rapl:<s>`` = ``package-<s>`` per socket (ids in hex), with
    subzones in the kernel's client order (core, uncore, dram); then ``psys`` as the next
    top-level zone; then ``intel-rapl-mmio:0`` duplicating ``package-0``."""
    pc = FakePowercap(base, layout)
    for s in range(sockets):
        pkg = f"intel-rapl:{s:x}"
        pc.add_zone(pkg, f"package-{s}", energy_uj=1_000_000 * (s + 1),
                    max_energy_range_uj=max_energy_range_uj, max_power_uw=max_power_uw,
                    power_limit_uw=power_limit_uw)
        sub = 0
        for wanted, name in ((core, "core"), (uncore, "uncore"), (dram, "dram")):
            if wanted:
                pc.add_zone(f"{pkg}:{sub:x}", name, energy_uj=1000 * (sub + 1),
                            max_energy_range_uj=max_energy_range_uj)
                sub += 1
    if psys:
        pc.add_zone(f"intel-rapl:{sockets:x}", "psys", energy_uj=5_000_000,
                    max_energy_range_uj=max_energy_range_uj, power_limit_uw=28_000_000)
    if mmio:
        pc.add_zone("intel-rapl-mmio:0", "package-0", energy_uj=2_000_000,
                    max_energy_range_uj=max_energy_range_uj, power_limit_uw=power_limit_uw)
    return pc


# A separate process: the counter is start + power x (CLOCK_MONOTONIC - t0), modulo the range,
# rewritten in place at `hz` with a fixed width (pwrite, no truncation: a reader never sees an
# empty file). It prints t0 once ready and exits when its stdin closes.
_WRITER = r"""
import os, select, sys, time
path, start, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng, hz = int(sys.argv[4]), float(sys.argv[5])
width = len(str(rng))
fd = os.open(path, os.O_WRONLY)
# Hardware updates RAPL on time whatever the load: ask for a real-time slot (root or
# CAP_SYS_NICE), else a higher priority, so a busy test machine does not starve the writer and
# leave the counter still for milliseconds
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
except (AttributeError, OSError):
    try:
        os.nice(-10)
    except OSError:
        pass
t0 = time.monotonic()
def put():
    v = (start + int((time.monotonic() - t0) * rate)) % rng
    os.pwrite(fd, f"{v:>{width}}\n".encode(), 0)
put()
os.ftruncate(fd, width + 1)
sys.stdout.write(repr(t0) + "\n")
sys.stdout.flush()
period = 1.0 / hz
nxt = t0
while True:
    put()
    nxt += period
    now = time.monotonic()
    if nxt < now:
        nxt = now
    if select.select([0], [], [], nxt - now)[0] and not os.read(0, 64):
        break
"""


class CounterWriter:
    """Moves ``zone``'s ``energy_uj`` at ``power_w`` from a separate process (``hz`` writes a
    second), wrapping at the zone's ``max_energy_range_uj``. Use as a context manager; the true
    energy between two CLOCK_MONOTONIC instants is ``power_w x (t1 - t0)``."""

    def __init__(self, zone: FakeZone, power_w: float, *, hz: float = 1000.0,
                 start_uj: int = 0) -> None:
        self.zone = zone
        self.power_w = power_w
        self.hz = hz
        self.start_uj = start_uj
        self.range_uj = int((zone.path / "max_energy_range_uj").read_text())
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0

    def __enter__(self) -> "CounterWriter":
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _WRITER, str(self.zone.energy_path), str(self.start_uj),
             repr(self.power_w * 1e6), str(self.range_uj), repr(self.hz)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.__exit__(None, None, None)
            raise RuntimeError("the counter writer did not start")
        self.t0 = float(line)
        return self

    def true_j(self, t0: float, t1: float) -> float:
        return self.power_w * (t1 - t0)

    def __exit__(self, *exc) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def wait_until(predicate, timeout_s: float = 5.0, step_s: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; its last answer."""
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            return bool(predicate())
        time.sleep(step_s)
    return True
