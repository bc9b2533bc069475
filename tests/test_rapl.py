"""The Linux powercap (RAPL) collector, against fake sysfs trees built in tmp_path."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenprof.collectors import rapl
from greenprof.collectors.base import Collector, SensorStatus, WrapTracker
from greenprof.errors import SensorLost

try:  # tests/ is on sys.path (rootdir-less "prepend" import mode)
    from powercap_fake import DEFAULT_RANGE_UJ, FakePowercap, build
except ImportError:  # pragma: no cover - tests/ became a package
    from tests.powercap_fake import DEFAULT_RANGE_UJ, FakePowercap, build


PERMISSION_FIX_WORDS = ("root-only since Linux 5.10", "CVE-2020-8694", "sudo chmod o+r",
                        "udev", "chgrp power", "chmod g+r",
                        "README 'Giving greenprof access to RAPL'")


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rapl.ENV_ROOT, raising=False)
    # These tests write counter values by hand, including impossible ones (a racing "stale"
    # value), which a watcher process would also read; the watcher has its own tests in
    # test_wrap_blocked.py.
    monkeypatch.setenv(rapl.ENV_WATCH, "0")


@pytest.fixture
def closing():
    """Collects Discovery objects and closes their file descriptors after the test."""
    found = []
    yield found.append
    for d in found:
        d.close()


def discover(root, closing) -> rapl.Discovery:
    d = rapl.discover(root)
    closing(d)
    return d


def by_domain(d) -> dict[str, SensorStatus]:
    statuses = {s.domain: s for s in d.statuses}
    assert len(statuses) == len(d.statuses), "a domain was reported twice"
    return statuses


def default_domains(d) -> set[str]:
    return {c.domain for c in d.default_set()}


def small_range_zone(tmp_path: Path, *, range_uj: int = 1_000_000, energy_uj: int = 0,
                     layout: str = "sysfs") -> tuple[FakePowercap, str]:
    pc = FakePowercap(tmp_path, layout)
    # 0.1 W limit, so 0.2 W max: a 1 J range takes 5 s to go round, and reads a few ms apart
    # on a loaded machine stay "close" (a racing stale read is then told from a wrap by size)
    pc.add_zone("intel-rapl:0", "package-0", energy_uj=energy_uj,
                max_energy_range_uj=range_uj, power_limit_uw=100_000)
    return pc, "intel-rapl:0"


def deny(monkeypatch: pytest.MonkeyPatch, target: str, *, on: str, err: int = errno.EACCES):
    """Make ``_open`` (on="open") or ``_pread`` (on="read") fail with ``err`` for ``target``;
    needed because root ignores file modes."""
    real_open, real_pread = rapl._open, rapl._pread
    denied_inode = os.stat(target).st_ino  # fd numbers get reused, inodes do not

    def fake_open(path, flags, *args):
        if on == "open" and os.fspath(path) == target:
            raise PermissionError(err, os.strerror(err), os.fspath(path))
        return real_open(path, flags, *args)

    def fake_pread(fd, n, offset):
        if on == "read" and os.fstat(fd).st_ino == denied_inode:
            raise PermissionError(err, os.strerror(err))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(rapl, "_open", fake_open)
    monkeypatch.setattr(rapl, "_pread", fake_pread)


# ---------------------------------------------------------------------------- topology


def test_one_socket_packages_and_dram_are_the_default_set(tmp_path, closing):
    pc = build(tmp_path, sockets=1, dram=True)
    d = discover(pc.root, closing)
    st = by_domain(d)
    assert set(st) == {"cpu-package-0", "dram-0"}
    for s in st.values():
        assert (s.source, s.method, s.available, s.in_default_set) == ("rapl", "measured",
                                                                       True, True)
        assert s.why_not == ""
    assert default_domains(d) == {"cpu-package-0", "dram-0"}
    assert st["cpu-package-0"].detail.startswith(pc.path_of("intel-rapl:0") + " (package-0)")
    assert st["dram-0"].detail.startswith(pc.path_of("intel-rapl:0:0") + " (dram)")
    for c in d.collectors.values():
        assert isinstance(c, Collector)
        assert c.read_j() == 0.0


def test_two_sockets(tmp_path, closing):
    pc = build(tmp_path, sockets=2, dram=True)
    d = discover(pc.root, closing)
    assert set(by_domain(d)) == {"cpu-package-0", "cpu-package-1", "dram-0", "dram-1"}
    assert default_domains(d) == {"cpu-package-0", "cpu-package-1", "dram-0", "dram-1"}
    # each domain reads its own zone
    pc.set_energy("intel-rapl:1", 1_000_000 * 2 + 7_000_000)
    pc.set_energy("intel-rapl:1:0", 1000 + 3_000_000)
    got = {dom: c.read_j() for dom, c in d.collectors.items()}
    assert got == {"cpu-package-0": 0.0, "cpu-package-1": 7.0, "dram-0": 0.0, "dram-1": 3.0}


@pytest.mark.parametrize("layout", ["sysfs", "nested", "flat"])
def test_every_zone_once_whatever_the_layout(tmp_path, closing, layout):
    pc = build(tmp_path, sockets=2, core=True, uncore=True, dram=True, psys=True,
               layout=layout)
    d = discover(pc.root, closing)
    assert set(by_domain(d)) == {
        "cpu-package-0", "cpu-core-0", "uncore-0", "dram-0",
        "cpu-package-1", "cpu-core-1", "uncore-1", "dram-1", "psys"}
    assert len(d.collectors) == 9
    # one fd per zone, each on a different file
    assert len({c.path for c in d.collectors.values()}) == 9


def test_real_sysfs_layout_lists_subzones_flat_as_symlinks(tmp_path, closing):
    pc = build(tmp_path, sockets=1, dram=True, layout="sysfs")
    root_entries = sorted(os.listdir(pc.root))
    assert root_entries == ["intel-rapl", "intel-rapl:0", "intel-rapl:0:0"]
    assert all(os.path.islink(pc.root / e) for e in root_entries)
    # the nested copy is the same directory: reported once, through the flat symlink
    d = discover(pc.root, closing)
    assert [s.domain for s in d.statuses] == ["cpu-package-0", "dram-0"]


def test_duplicate_zone_id_at_two_real_paths_is_reported_once(tmp_path, closing):
    pc = build(tmp_path, sockets=1, dram=True, layout="nested")
    # a stray top-level copy of the nested subzone (different real path, same zone id)
    copy = pc.root / "intel-rapl:0:0"
    copy.mkdir()
    for f in ("name", "energy_uj", "max_energy_range_uj"):
        (copy / f).write_text((pc.zone("intel-rapl:0:0").path / f).read_text())
    d = discover(pc.root, closing)
    assert [s.domain for s in d.statuses].count("dram-0") == 1
    assert not any("@" in s.domain for s in d.statuses)


def test_psys_is_listed_but_never_in_the_default_set(tmp_path, closing):
    pc = build(tmp_path, sockets=1, dram=True, psys=True)
    d = discover(pc.root, closing)
    st = by_domain(d)["psys"]
    assert st.available and not st.in_default_set
    assert st.why_not == ("covers the whole platform including cpu-package-*: never summed "
                          "with them; select it explicitly")
    assert "psys" in d.collectors  # opened, so the user can select it explicitly
    assert default_domains(d) == {"cpu-package-0", "dram-0"}

    # summing the default set counts package + dram, never psys on top
    pc.set_energy("intel-rapl:0", 1_000_000 + 10_000_000)
    pc.set_energy("intel-rapl:0:0", 1000 + 2_000_000)
    pc.set_energy("intel-rapl:1", 5_000_000 + 15_000_000)
    assert sum(c.read_j() for c in d.default_set()) == pytest.approx(12.0)
    assert d.collectors["psys"].read_j() == pytest.approx(15.0)


def test_several_psys_zones_are_numbered(tmp_path, closing):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0")
    pc.add_zone("intel-rapl:1", "psys")
    pc.add_zone("intel-rapl:2", "psys")
    d = discover(pc.root, closing)
    st = by_domain(d)
    assert {"psys-0", "psys-1"} <= set(st)
    assert not st["psys-0"].in_default_set and not st["psys-1"].in_default_set
    assert default_domains(d) == {"cpu-package-0"}


def test_core_and_uncore_are_subzones_not_summed(tmp_path, closing):
    pc = build(tmp_path, sockets=2, core=True, uncore=True, dram=True)
    d = discover(pc.root, closing)
    st = by_domain(d)
    for n in (0, 1):
        for dom in (f"cpu-core-{n}", f"uncore-{n}"):
            assert st[dom].available and not st[dom].in_default_set
            assert st[dom].why_not == f"sub-zone of cpu-package-{n}: already counted in it"
            assert dom in d.collectors
        assert st[f"dram-{n}"].in_default_set
    # client order: core = :0, uncore = :1, dram = :2
    assert st["dram-1"].detail.startswith(pc.path_of("intel-rapl:1:2") + " (dram)")
    assert st["uncore-1"].detail.startswith(pc.path_of("intel-rapl:1:1") + " (uncore)")
    assert default_domains(d) == {"cpu-package-0", "cpu-package-1", "dram-0", "dram-1"}


def test_unknown_zone_name_is_listed_but_not_summed(tmp_path, closing):
    pc = build(tmp_path, sockets=1, dram=False)
    pc.add_zone("intel-rapl:0:0", "gpu")
    pc.add_zone("intel-rapl:1", "platform-x")
    d = discover(pc.root, closing)
    st = by_domain(d)
    assert st["rapl-gpu-0"].available and not st["rapl-gpu-0"].in_default_set
    assert "unknown RAPL zone 'gpu'" in st["rapl-gpu-0"].why_not
    assert st["rapl-platform-x"].available and not st["rapl-platform-x"].in_default_set
    assert default_domains(d) == {"cpu-package-0"}


def test_hex_zone_numbers(tmp_path, closing):
    pc = build(tmp_path, sockets=17, dram=True)
    listing = os.listdir(pc.root)
    assert {"intel-rapl:a", "intel-rapl:b:0", "intel-rapl:10", "intel-rapl:10:0"} <= set(listing)
    d = discover(pc.root, closing)
    st = by_domain(d)
    assert len(st) == 34
    assert st["cpu-package-10"].detail.startswith(pc.path_of("intel-rapl:a") + " (package-10)")
    assert st["dram-11"].detail.startswith(pc.path_of("intel-rapl:b:0") + " (dram)")
    assert st["dram-16"].detail.startswith(pc.path_of("intel-rapl:10:0") + " (dram)")
    # statuses in numeric zone order, not string order (intel-rapl:10 is zone 16, after :f)
    pkgs = [s.domain for s in d.statuses if s.domain.startswith("cpu-package-")]
    assert pkgs == [f"cpu-package-{i}" for i in range(17)]


def test_hex_parent_id_names_the_subzone_when_the_package_has_no_name(tmp_path, closing):
    pc = build(tmp_path, sockets=12, dram=True)
    pc.zone("intel-rapl:a").remove("name")
    d = discover(pc.root, closing)
    st = by_domain(d)
    # the dram under intel-rapl:a is numbered from the zone id, parsed as hex
    assert st["dram-10"].available and st["dram-10"].in_default_set
    assert "cpu-package-10" not in st
    broken = st["rapl-intel-rapl:a"]
    assert not broken.available and not broken.in_default_set
    assert broken.why_not == f"{pc.path_of('intel-rapl:a')}/name is missing"


def test_mmio_duplicate_of_package_is_skipped(tmp_path, closing):
    pc = build(tmp_path, sockets=1, dram=True, mmio=True)
    d = discover(pc.root, closing)
    st = by_domain(d)
    assert set(st) == {"cpu-package-0", "dram-0"}
    assert "duplicate intel-rapl-mmio:0 (package-0) skipped" in st["cpu-package-0"].detail
    pkg = d.collectors["cpu-package-0"]
    assert pkg.path == os.path.join(pc.path_of("intel-rapl:0"), "energy_uj")


def test_mmio_zone_alone_is_used(tmp_path, closing):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl-mmio:0", "package-0", energy_uj=10)
    d = discover(pc.root, closing)
    st = by_domain(d)
    assert st["cpu-package-0"].available and st["cpu-package-0"].in_default_set
    assert "intel-rapl-mmio:0" in d.collectors["cpu-package-0"].path


# ---------------------------------------------------------------------------- counting


def test_wrap_inside_a_window_gives_the_right_sum(tmp_path, closing):
    pc, zid = small_range_zone(tmp_path, range_uj=1_000_000, energy_uj=900_000)
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    assert c.read_j() == 0.0
    pc.set_energy(zid, 980_000)
    assert c.read_j() == pytest.approx(0.08)
    pc.set_energy(zid, 30_000)  # wrapped: 20_000 to the top, then 30_000
    assert c.read_j() == pytest.approx(0.13)
    assert c.wraps == 1
    pc.set_energy(zid, 400_000)
    assert c.read_j() == pytest.approx(0.50)
    pc.set_energy(zid, 800_000)
    assert c.read_j() == pytest.approx(0.90)
    pc.set_energy(zid, 100_000)  # second wrap: 200_000 to the top, then 100_000
    assert c.read_j() == pytest.approx(1.20)
    assert c.wraps == 2


def test_frozen_counter_is_constant_and_never_a_wrap(tmp_path, closing):
    pc, zid = small_range_zone(tmp_path, range_uj=1_000_000, energy_uj=999_999)
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    values = [c.read_j() for _ in range(50)]
    assert values == [0.0] * 50
    pc.set_energy(zid, 999_999)  # rewritten with the same value
    assert c.read_j() == 0.0
    assert c.poll() == 0.0
    assert c.wraps == 0


def test_stale_older_read_after_a_newer_commit_is_not_a_wrap(tmp_path, closing):
    pc, zid = small_range_zone(tmp_path, range_uj=1_000_000, energy_uj=100_000)
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    pc.set_energy(zid, 300_000)
    assert c.read_j() == pytest.approx(0.2)
    # another thread's read of an older value lands after the newer commit
    pc.set_energy(zid, 250_000)
    assert c.read_j() == pytest.approx(0.2)  # held, not 0.15 and not a +1 J wrap
    assert c.wraps == 0
    pc.set_energy(zid, 350_000)
    assert c.read_j() == pytest.approx(0.25)
    assert c.wraps == 0


def test_stale_pre_wrap_read_after_a_committed_wrap_is_not_counted_twice(tmp_path, closing):
    pc, zid = small_range_zone(tmp_path, range_uj=1_000_000, energy_uj=900_000)
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    pc.set_energy(zid, 50_000)  # wrap committed: 100_000 + 50_000
    assert c.read_j() == pytest.approx(0.15)
    assert c.wraps == 1
    pc.set_energy(zid, 990_000)  # a racing read taken before the wrap
    stale = c.read_j()
    assert stale == pytest.approx(0.09)  # its own moment, not 1.09 (a second wrap offset)
    assert c.wraps == 1
    pc.set_energy(zid, 60_000)
    assert c.read_j() == pytest.approx(0.16)  # the committed state was untouched
    assert c.wraps == 1


# ---------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("err", [errno.EACCES, errno.EPERM])
@pytest.mark.parametrize("on", ["open", "read"])
def test_permission_denied_gives_an_unavailable_status_with_the_fix(tmp_path, closing,
                                                                    monkeypatch, on, err):
    pc = build(tmp_path, sockets=1, dram=True)
    target = os.path.join(pc.path_of("intel-rapl:0"), "energy_uj")
    deny(monkeypatch, target, on=on, err=err)
    d = discover(pc.root, closing)
    st = by_domain(d)
    pkg = st["cpu-package-0"]
    assert not pkg.available and not pkg.in_default_set
    assert pkg.why_not.startswith(f"cannot read {target} ")
    for word in PERMISSION_FIX_WORDS:
        assert word in pkg.why_not
    assert "\n" not in pkg.why_not
    assert "cpu-package-0" not in d.collectors
    # the other zone is unaffected
    assert st["dram-0"].available and default_domains(d) == {"dram-0"}


def test_permission_denied_everywhere_never_crashes(tmp_path, closing, monkeypatch):
    pc = build(tmp_path, sockets=2, dram=True, psys=True)

    def no_access(path, flags, *args):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    monkeypatch.setattr(rapl, "_open", no_access)
    d = discover(pc.root, closing)
    assert len(d.statuses) == 5
    assert all(not s.available and "CVE-2020-8694" in s.why_not for s in d.statuses)
    assert d.collectors == {} and d.default_set() == []


def test_permission_denied_mid_run_is_sensor_lost(tmp_path, closing, monkeypatch):
    pc, zid = small_range_zone(tmp_path)
    c = discover(pc.root, closing).collectors["cpu-package-0"]

    def denied(fd, n, offset):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(rapl, "_pread", denied)
    with pytest.raises(SensorLost, match="energy_uj"):
        c.read_j()


# ---------------------------------------------------------------------------- malformed trees


def _edit(zone, action: str, filename: str, content: str = "") -> None:
    if action == "remove":
        zone.remove(filename)
    else:
        zone.write(filename, content)


@pytest.mark.parametrize(
    "action, filename, content, domain, reason",
    [
        ("write", "energy_uj", "", "cpu-package-0", "energy_uj is empty"),
        ("write", "energy_uj", "\n", "cpu-package-0", "energy_uj is empty"),
        ("write", "energy_uj", "lots\n", "cpu-package-0", "holds 'lots', not an integer"),
        ("write", "energy_uj", "12.5\n", "cpu-package-0", "not an integer"),
        ("write", "energy_uj", "-5\n", "cpu-package-0", "energy_uj holds a negative value"),
        ("write", "energy_uj", f"{DEFAULT_RANGE_UJ + 1}\n", "cpu-package-0",
         "above max_energy_range_uj"),
        ("remove", "energy_uj", "", "cpu-package-0", "energy_uj does not exist"),
        ("remove", "max_energy_range_uj", "", "cpu-package-0",
         "max_energy_range_uj is missing: wraps could not be corrected"),
        ("write", "max_energy_range_uj", "", "cpu-package-0", "max_energy_range_uj is empty"),
        ("write", "max_energy_range_uj", "0\n", "cpu-package-0", "max_energy_range_uj is 0"),
        ("write", "max_energy_range_uj", "big\n", "cpu-package-0", "not an integer"),
        ("write", "max_energy_range_uj", "-1\n", "cpu-package-0", "negative value"),
        ("remove", "name", "", "rapl-intel-rapl:0", "/name is missing"),
        ("write", "name", "\n", "rapl-intel-rapl:0", "/name is empty"),
    ],
)
def test_malformed_zone_is_listed_unavailable_with_a_reason(tmp_path, closing, action,
                                                            filename, content, domain, reason):
    pc = build(tmp_path, sockets=1, dram=True)
    zone = pc.zone("intel-rapl:0")
    _edit(zone, action, filename, content)
    d = discover(pc.root, closing)
    st = by_domain(d)
    bad = st[domain]
    assert not bad.available and not bad.in_default_set
    assert reason in bad.why_not
    assert pc.path_of("intel-rapl:0") in bad.why_not  # names the file
    assert domain not in d.collectors
    assert st["dram-0"].available  # the rest of the tree still works


def test_malformed_constraints_fall_back_to_a_safe_read_interval(tmp_path, closing):
    pc, zid = small_range_zone(tmp_path, range_uj=DEFAULT_RANGE_UJ)
    pc.zone(zid).write("constraint_0_power_limit_uw", "garbage\n")
    pc.zone(zid).write("constraint_1_max_power_uw", "\n")
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    assert c.max_power_w == 500.0
    assert c.max_read_interval_s == pytest.approx(DEFAULT_RANGE_UJ / 1e6 / 500 / 2)


@pytest.mark.parametrize("content", ["garbage\n", "", "-3\n", f"{2_000_000}\n"])
def test_garbage_mid_run_raises_sensor_lost_naming_the_file(tmp_path, closing, content):
    pc, zid = small_range_zone(tmp_path, range_uj=1_000_000, energy_uj=5)
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    assert c.read_j() == 0.0
    pc.set_energy(zid, content)
    with pytest.raises(SensorLost) as info:
        c.read_j()
    assert c.path in str(info.value) and "cpu-package-0" in str(info.value)


def test_vanished_sensor_mid_run_raises_sensor_lost(tmp_path, closing, monkeypatch):
    pc, zid = small_range_zone(tmp_path)
    c = discover(pc.root, closing).collectors["cpu-package-0"]

    def gone(fd, n, offset):  # what sysfs answers once the device is removed
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    monkeypatch.setattr(rapl, "_pread", gone)
    with pytest.raises(SensorLost, match=r"energy_uj failed mid-run \(No such device\)"):
        c.read_j()


# ---------------------------------------------------------------------------- root selection


def test_missing_root_gives_one_status(tmp_path):
    root = tmp_path / "nope"
    d = rapl.discover(root)
    assert d.collectors == {}
    assert d.statuses == [SensorStatus(
        source="rapl", domain="cpu-package", method="measured", available=False,
        in_default_set=False,
        why_not=f"no powercap tree at {root} (not Linux, a VM, or the intel_rapl module is "
                "not loaded: try `sudo modprobe intel_rapl_common`)")]


def test_empty_root_says_no_zones(tmp_path):
    (tmp_path / "powercap").mkdir()
    (tmp_path / "powercap" / "dtpm").mkdir()  # another powercap control type, not RAPL
    d = rapl.discover(tmp_path / "powercap")
    assert len(d.statuses) == 1 and not d.statuses[0].available
    assert d.statuses[0].why_not.startswith(f"no RAPL zones under {tmp_path / 'powercap'}")


def test_env_var_root_is_honoured(tmp_path, closing, monkeypatch):
    pc = build(tmp_path, sockets=1, dram=True)
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    d = rapl.discover()
    closing(d)
    assert default_domains(d) == {"cpu-package-0", "dram-0"}
    # an explicit argument wins over the environment
    d2 = rapl.discover(tmp_path / "elsewhere")
    assert d2.statuses[0].why_not.startswith(f"no powercap tree at {tmp_path / 'elsewhere'}")


def test_default_root_is_sysfs(monkeypatch):
    monkeypatch.delenv("GREENPROF_POWERCAP_ROOT", raising=False)
    assert rapl._root_from(None) == "/sys/class/powercap"
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", "")
    assert rapl._root_from(None) == "/sys/class/powercap"


# ---------------------------------------------------------------------------- file descriptors


def test_energy_file_is_opened_once_and_preaded(tmp_path, closing, monkeypatch):
    opened: list[str] = []
    preads: list[tuple[int, int, int]] = []
    real_open, real_pread = rapl._open, rapl._pread

    def counting_open(path, flags, *args):
        opened.append(os.fspath(path))
        return real_open(path, flags, *args)

    def counting_pread(fd, n, offset):
        preads.append((fd, n, offset))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(rapl, "_open", counting_open)
    monkeypatch.setattr(rapl, "_pread", counting_pread)
    pc, zid = small_range_zone(tmp_path)
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    for i in range(10):
        pc.set_energy(zid, 1000 * i)
        assert c.read_j() == pytest.approx(0.001 * i)
    assert opened == [c.path]
    assert len(preads) == 11 and len({p[0] for p in preads}) == 1
    assert all(p[1:] == (32, 0) for p in preads)


def test_a_file_replaced_after_open_is_not_reopened(tmp_path, closing):
    pc, zid = small_range_zone(tmp_path, energy_uj=100)
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    energy = pc.zone(zid).energy_path
    replacement = energy.with_name("energy_uj.new")
    replacement.write_text("900000\n")
    os.replace(replacement, energy)  # new inode at the same path
    assert c.read_j() == 0.0  # still reading the inode it opened


def test_close_is_idempotent_and_reads_after_close_fail_cleanly(tmp_path):
    pc, _ = small_range_zone(tmp_path)
    d = rapl.discover(pc.root)
    c = d.collectors["cpu-package-0"]
    fd = c._fd
    os.fstat(fd)  # open
    c.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    c.close()
    d.close()
    with pytest.raises(SensorLost, match="after close"):
        c.read_j()


def test_discovery_close_keeps_the_chosen_collectors(tmp_path):
    pc = build(tmp_path, sockets=1, dram=True, psys=True)
    d = rapl.discover(pc.root)
    keep = d.default_set()
    d.close(keep=keep)
    assert d.collectors["psys"]._fd == -1
    assert all(c._fd >= 0 for c in keep)
    for c in keep:
        c.close()


# ---------------------------------------------------------------------------- attributes


def test_collector_attributes_and_read_interval(tmp_path, closing):
    pc = FakePowercap(tmp_path)
    pc.add_zone("intel-rapl:0", "package-0", max_energy_range_uj=262_143_328_850,
                max_power_uw=200_000_000, power_limit_uw=65_000_000)
    pc.add_zone("intel-rapl:0:0", "dram", max_energy_range_uj=65_712_999_613,
                power_limit_uw=20_000_000)
    pc.add_zone("intel-rapl:1", "psys", max_energy_range_uj=262_143_328_850,
                max_power_uw=0)
    d = discover(pc.root, closing)
    pkg, dram, psys = (d.collectors[k] for k in ("cpu-package-0", "dram-0", "psys"))
    for c in (pkg, dram, psys):
        assert (c.source, c.method, c.integrates_power, c.resolution_s) == (
            "rapl", "measured", False, 0.001)
    assert pkg.max_power_w == 200.0  # max_power wins over the limit
    assert pkg.max_read_interval_s == pytest.approx(262_143.32885 / 200 / 2)
    assert dram.max_power_w == 40.0  # twice the limit
    assert dram.max_read_interval_s == pytest.approx(65_712.999613 / 40 / 2)
    assert psys.max_power_w == 500.0  # 0 max_power means "unknown"
    assert "read at least every" in by_domain(d)["cpu-package-0"].detail
    assert "(by this process only (GREENPROF_RAPL_WATCH=0))" in by_domain(d)["psys"].detail
    assert all(c.scope == "machine" for c in (pkg, dram, psys))
    assert pkg.wrap_s == pytest.approx(262_143.32885 / 200)
    assert (pkg.uncertain_count, pkg.uncertain_reason) == (0, None)
    assert pkg.watched is False  # GREENPROF_RAPL_WATCH=0 in this file


# ---------------------------------------------------------------------------- elapsed time


def test_tracker_uses_elapsed_time_to_tell_wraps_from_stale_reads():
    tr = WrapTracker(900, 1000, wrap_time=10.0, t=0.0)
    assert tr.update(950, 1.0) == 50
    assert tr.update(920, 2.0) == 50  # 1 s later, 30 back: a racing stale read, held
    assert tr.update(900, 0.5) == 50  # taken before the committed read: stale, held
    # 7 s after the committed read (more than half a lap): the counter went round, even though
    # it is "only" 50 back (the old size-only rule held such a read: 0 J)
    assert tr.update(900, 8.0) == 1000
    assert (tr.wraps, tr.uncertain) == (1, 0)
    # 22 s without a read (more than a lap): best guess, flagged
    assert tr.update(100, 30.0) == 1200
    assert (tr.uncertain, tr.last_gap) == (1, 22.0)
    assert tr.committed == (100, 2100, 30.0)
    tr.sync(150, 3150, 31.0)  # resolved elsewhere (the watcher): one more range went by
    assert tr.update(160, 31.5) == 3160 - 900 and tr.wraps == 3
    tr.sync(10, 10, 1.0)  # older than what is committed: ignored
    assert tr.committed == (160, 3160, 31.5)


def test_tracker_without_times_keeps_the_size_rule():
    tr = WrapTracker(900, 1000)
    assert tr.update(950) == 50
    assert tr.update(920) == 50
    assert tr.update(100) == 200 and tr.wraps == 1 and tr.uncertain == 0


@pytest.fixture
def clock(monkeypatch):
    """rapl's monotonic clock, driven by hand (ns)."""
    now = [10**12]
    monkeypatch.setattr(rapl, "_now_ns", lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += int(seconds * 1e9)

    return advance


def test_a_wrap_seen_late_is_counted_not_held(tmp_path, closing, clock):
    """The reported bug: a read more than half a lap after the last one, past a wrap, was
    taken for a stale read and held (0 J)."""
    pc, zid = small_range_zone(tmp_path, range_uj=1_000_000, energy_uj=500_000)  # lap 5 s
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    assert c.wrap_s == pytest.approx(5.0)
    clock(0.1)
    assert c.read_j() == 0.0
    clock(3.0)
    pc.set_energy(zid, 400_000)  # 0.9 J in 3 s, past the wrap
    assert c.read_j() == pytest.approx(0.9)
    assert (c.wraps, c.uncertain_count, c.uncertain_reason) == (1, 0, None)


def test_a_read_more_than_a_lap_after_the_last_is_flagged(tmp_path, closing, clock):
    pc, zid = small_range_zone(tmp_path, range_uj=1_000_000, energy_uj=500_000)
    c = discover(pc.root, closing).collectors["cpu-package-0"]
    clock(6.0)
    pc.set_energy(zid, 700_000)
    assert c.read_j() == pytest.approx(0.2)  # best guess: no lap missed
    assert c.uncertain_count == 1
    assert c.uncertain_reason == (
        "cpu-package-0: 6.00 s without a counter read (wrap every 5.00 s at 0.2 W max): a wrap "
        "may have been missed; no watcher process (GREENPROF_RAPL_WATCH=0)")
    clock(1.0)
    pc.set_energy(zid, 800_000)
    assert c.read_j() == pytest.approx(0.3)
    assert c.uncertain_count == 1  # a close read is trusted again
    clock(12.0)
    assert c.poll() == pytest.approx(0.3)
    assert c.uncertain_count == 2 and c.uncertain_reason.startswith("cpu-package-0: 12.0 s ")


def test_import_touches_no_file(tmp_path):
    """Importing the module must not scan powercap (audit hook in a fresh interpreter)."""
    code = (
        "import sys\n"
        "hits = []\n"
        "def hook(event, args):\n"
        "    if event in ('open', 'os.listdir', 'os.scandir') and args and "
        "'powercap' in str(args[0]):\n"
        "        hits.append((event, args[0]))\n"
        "sys.addaudithook(hook)\n"
        "import greenprof.collectors.rapl as rapl\n"
        "print(len(hits))\n"
        "rapl.discover()\n"  # control: the hook does see a scan
        "print(len(hits))\n"
    )
    build(tmp_path, sockets=1)
    env = dict(os.environ, GREENPROF_POWERCAP_ROOT=str(tmp_path / "class" / "powercap"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out[0] == "0"
    assert int(out[1]) > 0
