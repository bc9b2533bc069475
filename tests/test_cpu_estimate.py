import time

import pytest

from greenprof.collectors import cpu_estimate as ce
from greenprof.errors import ConfigError

PLATINUM_8259CL = "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"  # AWS m5; 210 W in CodeCarbon


@pytest.fixture(autouse=True)
def _tdp_cache(tmp_path, monkeypatch):
    """Every test gets its own (empty) TDP lookup cache file, never the user's."""
    path = tmp_path / "tdp-cache" / "cpu-tdp.json"
    monkeypatch.setattr(ce, "TDP_CACHE_PATH", str(path))
    ce._cached_lookup.cache_clear()
    yield path
    ce._cached_lookup.cache_clear()


@pytest.fixture()
def machine(tmp_path):
    """Builds a fake /proc/cpuinfo, DMI folder and /sys/hypervisor/type; returns the keyword
    arguments that point ``power_model`` / ``detect_platform`` at them."""
    count = iter(range(1000))

    def build(model="", *, siblings=2, hypervisor=False, dmi=None, hyp_type=None, vendor="GenuineIntel",
              family=6, cpu_model=85, stepping=7, arm_part=None):
        d = tmp_path / f"m{next(count)}"
        (d / "dmi").mkdir(parents=True)
        for key, value in (dmi or {}).items():
            (d / "dmi" / key).write_text(value + "\n")
        if hyp_type:
            (d / "hypervisor_type").write_text(hyp_type + "\n")
        blocks = []
        for n in range(2):
            if arm_part:  # arm64: no model name, no flags
                lines = [f"processor\t: {n}", "BogoMIPS\t: 243.75", "Features\t: fp asimd evtstrm aes",
                         "CPU implementer\t: 0x41", "CPU architecture: 8", f"CPU part\t: {arm_part}"]
            else:
                flags = "fpu vme de pse tsc msr" + (" hypervisor" if hypervisor else "") + " lahf_lm"
                lines = [f"processor\t: {n}", f"vendor_id\t: {vendor}", f"cpu family\t: {family}",
                         f"model\t\t: {cpu_model}", f"model name\t: {model}", f"stepping\t: {stepping}",
                         f"siblings\t: {siblings}", f"flags\t\t: {flags}"]
            blocks.append("\n".join(lines) + "\n")
        (d / "cpuinfo").write_text("\n".join(blocks) + "\n")
        return {"cpuinfo_path": str(d / "cpuinfo"), "dmi_dir": str(d / "dmi"),
                "hypervisor_path": str(d / "hypervisor_type")}

    return build


@pytest.fixture()
def table():
    path = ce.codecarbon_cpu_table()
    assert path is not None and path.name == "cpu_power.csv", "CodeCarbon's CPU table must be installed"
    return path


@pytest.mark.parametrize("raw, name, tdp", [
    ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Intel Xeon Gold 6248", 150.0),
    ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763", 280.0),
    ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "Intel Core i7-8700", 65.0),
])
def test_tdp_lookup_reads_codecarbon_table(table, raw, name, tdp):
    assert ce.lookup_tdp(raw, table) == (name, tdp)


def test_family_name_without_model_number_is_not_matched(table):
    # "AMD EPYC" (what many VMs report) must not be matched to some arbitrary EPYC
    assert ce.lookup_tdp("AMD EPYC", table) is None


def test_codecarbon_is_not_imported(table):
    import subprocess
    import sys

    code = ("import sys; from greenprof.collectors import cpu_estimate as c; c.power_model(); "
            "print('codecarbon' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_cpu_uses_documented_default(machine):
    pm = ce.power_model(env={}, **machine("Imaginary CPU 9000", siblings=8))
    assert pm.platform == "bare-metal" and not pm.virtualised
    assert pm.w_per_thread == ce.DEFAULT_W_PER_THREAD == 4.0
    assert pm.tdp_w is None
    assert "Imaginary CPU 9000" in pm.basis and "GREENPROF_CPU_TDP_W" in pm.basis
    assert pm.basis.startswith("bare metal (no hypervisor flag")


def test_known_cpu_splits_tdp_over_threads(machine):
    pm = ce.power_model(env={}, **machine("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", siblings=40))
    assert pm.tdp_w == 150.0 and pm.threads == 40
    assert pm.w_per_thread == pytest.approx(150.0 / 40)


def test_tdp_override(machine):
    pm = ce.power_model(env={"GREENPROF_CPU_TDP_W": "64"}, **machine("x", siblings=8))
    assert pm.w_per_thread == pytest.approx(8.0)
    assert "GREENPROF_CPU_TDP_W" in pm.basis and pm.basis.startswith("bare metal")
    # an explicit TDP wins in a VM too, and the basis says it is a VM
    pm = ce.power_model(env={"GREENPROF_CPU_TDP_W": "64"}, **machine("x", siblings=8, hypervisor=True))
    assert pm.w_per_thread == pytest.approx(8.0)
    assert pm.basis.startswith("VM (hypervisor flag)") and "GREENPROF_CPU_TDP_W" in pm.basis


@pytest.mark.parametrize("bad", ["abc", "-5", "0", "nan"])
def test_bad_override_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="GREENPROF_CPU_TDP_W"):
        ce.power_model(env={"GREENPROF_CPU_TDP_W": bad})


def test_counter_follows_process_cpu_time():
    pm = ce.CpuPowerModel("x", 100.0, 4, 25.0, "test")
    c = ce.CpuEstimateCollector(pm)
    t0 = time.process_time()
    end = time.perf_counter() + 0.2
    x = 0
    while time.perf_counter() < end:
        x += 1
    cpu_s = time.process_time() - t0
    e = c.read_j()
    assert c.method == "estimated"
    # the collector's origin was taken just before t0, so its reading is at least cpu_s x 25 W
    assert e == pytest.approx(cpu_s * 25.0, rel=0.05)
    assert e > 0


def test_sleeping_costs_nothing():
    pm = ce.CpuPowerModel("x", 100.0, 4, 25.0, "test")
    c = ce.CpuEstimateCollector(pm)
    before = c.read_j()
    time.sleep(0.1)
    assert c.read_j() - before < 25.0 * 0.02  # < 20 ms of CPU while asleep


def test_discover_reports_estimated_with_basis():
    d = ce.discover(env={})
    (s,) = d.statuses
    assert s.available and s.method == "estimated" and s.domain == "cpu-estimate"
    assert "W/thread" in s.detail
    assert d.collectors["cpu-estimate"].read_j() >= 0


# -- virtual machines ---------------------------------------------------------------------------
def test_vm_uses_per_vcpu_figure_not_host_tdp_over_vcpus(machine):
    """The issue: a 2-vCPU AWS m5 VM was charged 210 W / 2 = 105 W per busy thread."""
    paths = machine(PLATINUM_8259CL, siblings=2, hypervisor=True,
                    dmi={"sys_vendor": "Amazon EC2", "product_name": "m5.large"})
    pm = ce.power_model(env={}, **paths)
    assert pm.virtualised and pm.platform == "vm"
    assert pm.microarchitecture == "Cascade Lake"
    assert pm.w_per_thread == 3.97  # CCF's Cascade Lake max W per vCPU, not 105 W
    assert 1 < pm.w_per_thread < 10
    b = pm.basis
    assert b.startswith("VM (hypervisor flag; DMI: Amazon EC2 m5.large): Cascade Lake, 3.97 W per busy vCPU")
    assert "Cloud Carbon Footprint" in b and "min 0.64 W" in b and "not the host's 210 W TDP" in b
    assert "\n" not in b
    # the VM's vCPU count does not change the per-vCPU figure
    assert ce.power_model(env={}, **machine(PLATINUM_8259CL, siblings=8, hypervisor=True)).w_per_thread == 3.97


@pytest.mark.parametrize("dmi", [None, {"sys_vendor": "Amazon EC2", "product_name": "m5.metal"}])
def test_same_cpu_on_bare_metal_keeps_codecarbon_tdp(machine, dmi):
    pm = ce.power_model(env={}, **machine(PLATINUM_8259CL, siblings=48, dmi=dmi))
    assert pm.platform == "bare-metal" and pm.microarchitecture is None
    assert pm.tdp_w == 210.0 and pm.w_per_thread == pytest.approx(210.0 / 48)
    assert pm.basis.startswith("bare metal (no hypervisor flag")
    assert "CodeCarbon's CPU table" in pm.basis and "48 threads" in pm.basis


@pytest.mark.parametrize("dmi, provider", [
    ({"sys_vendor": "Amazon EC2", "product_name": "m5.large"}, "aws"),
    ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, "gcp"),
    ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine",
      "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77"}, "azure"),
    ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine"}, None),  # Hyper-V
    ({"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"}, None),
    ({"sys_vendor": "innotek GmbH", "product_name": "VirtualBox"}, None),
    ({"sys_vendor": "VMware, Inc.", "product_name": "VMware Virtual Platform"}, None),
    ({"sys_vendor": "Xen", "product_name": "HVM domU", "bios_version": "4.11.amazon"}, "aws"),
])
def test_dmi_alone_detects_a_vm(machine, dmi, provider):
    plat = ce.detect_platform({}, **machine(PLATINUM_8259CL, hypervisor=False, dmi=dmi))
    assert plat.kind == "vm" and plat.provider == provider
    assert plat.evidence.startswith("DMI: ") and "hypervisor flag" not in plat.evidence


def test_sys_hypervisor_type_detects_a_vm(machine):
    plat = ce.detect_platform({}, **machine(PLATINUM_8259CL, hyp_type="xen"))
    assert plat.kind == "vm" and plat.evidence == "/sys/hypervisor: xen"


def test_physical_dmi_is_bare_metal_and_named(machine):
    plat = ce.detect_platform({}, **machine("x", dmi={"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R740"}))
    assert plat.kind == "bare-metal" and plat.evidence == "no hypervisor flag; DMI: Dell Inc. PowerEdge R740"


def test_greenprof_virt_overrides_detection(machine):
    vm = machine(PLATINUM_8259CL, siblings=2, hypervisor=True)
    metal = machine(PLATINUM_8259CL, siblings=48)
    pm = ce.power_model(env={"GREENPROF_VIRT": "bare-metal"}, **vm)
    assert pm.platform == "bare-metal" and pm.w_per_thread == pytest.approx(105.0)
    assert pm.basis.startswith("bare metal (GREENPROF_VIRT=bare-metal)")
    pm = ce.power_model(env={"GREENPROF_VIRT": "VM"}, **metal)
    assert pm.platform == "vm" and pm.w_per_thread == 3.97
    assert pm.basis.startswith("VM (GREENPROF_VIRT=vm): Cascade Lake")
    assert ce.power_model(env={"GREENPROF_VIRT": ""}, **vm).platform == "vm"  # empty: detect


def test_bad_greenprof_virt_is_a_config_error(machine):
    with pytest.raises(ConfigError, match="GREENPROF_VIRT='cloud' is not 'vm' or 'bare-metal'"):
        ce.power_model(env={"GREENPROF_VIRT": "cloud"}, **machine("x"))


def test_unknown_cpu_in_a_vm_gets_the_documented_default(machine):
    pm = ce.power_model(env={}, **machine("Imaginary CPU 9000", hypervisor=True, vendor="Imaginary",
                                          family=1, cpu_model=1))
    assert pm.platform == "vm" and pm.microarchitecture is None
    assert pm.w_per_thread == ce.CCF_OVERALL_AVERAGE[1] == 3.84
    assert "'Imaginary CPU 9000' has no figure in Cloud Carbon Footprint" in pm.basis
    assert "greenprof's default (mean of CCF's AWS, GCP and Azure averages), 3.84 W per busy vCPU" in pm.basis


def test_unknown_cpu_in_a_known_cloud_gets_that_providers_average(machine):
    pm = ce.power_model(env={}, **machine("Imaginary CPU 9000", vendor="Imaginary",
                                          dmi={"sys_vendor": "Amazon EC2", "product_name": "x9.large"}))
    assert pm.platform == "vm" and pm.w_per_thread == 3.5
    assert "CCF's AWS average, 3.5 W per busy vCPU (min 0.74 W)" in pm.basis


def test_microarchitecture_without_a_ccf_figure_is_named(machine):
    pm = ce.power_model(env={}, **machine("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", hypervisor=True,
                                          dmi={"sys_vendor": "Google", "product_name": "Google Compute Engine"}))
    assert pm.microarchitecture == "Sapphire Rapids" and pm.w_per_thread == 4.26
    assert "Sapphire Rapids has no figure in Cloud Carbon Footprint" in pm.basis
    assert "CCF's GCP median" in pm.basis


@pytest.mark.parametrize("model, arch", [
    (PLATINUM_8259CL, "Cascade Lake"),
    ("Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz", "Skylake"),
    ("Intel(R) Xeon(R) Platinum 8124M CPU @ 3.00GHz", "Skylake"),
    ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "Ice Lake"),
    ("Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz", "Cooper Lake"),
    ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Cascade Lake"),
    ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", "Broadwell"),
    ("Intel(R) Xeon(R) CPU E5-2676 v3 @ 2.40GHz", "Haswell"),
    ("Intel(R) Xeon(R) CPU E5-2670 v2 @ 2.50GHz", "Ivy Bridge"),
    ("Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", "Sandy Bridge"),
    ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "Coffee Lake"),
    ("AMD EPYC 7571", "AMD EPYC 1st Gen (Naples)"),
    ("AMD EPYC 7R32", "AMD EPYC 2nd Gen (Rome)"),
    ("AMD EPYC 7B12", "AMD EPYC 2nd Gen (Rome)"),
    ("AMD EPYC 7R13 Processor", "AMD EPYC 3rd Gen (Milan)"),
    ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 3rd Gen (Milan)"),
    ("AMD EPYC 9R14 96-Core Processor", "AMD EPYC 4th Gen (Genoa)"),
    ("Intel Xeon Processor (Cascadelake)", "Cascade Lake"),
    ("Intel Core Processor (Broadwell, IBRS)", "Broadwell"),
    ("AMD EPYC-Milan Processor", "AMD EPYC 3rd Gen (Milan)"),
])
def test_model_string_to_microarchitecture(model, arch):
    assert ce._by_name(model) == arch


def test_cpuid_names_the_microarchitecture_when_the_model_string_does_not(machine):
    # GCP hides the model number: "Intel(R) Xeon(R) CPU @ 2.20GHz"; n2 is family 6 model 85 stepping 7
    pm = ce.power_model(env={}, **machine("Intel(R) Xeon(R) CPU @ 2.20GHz", hypervisor=True,
                                          family=6, cpu_model=85, stepping=7))
    assert pm.microarchitecture == "Cascade Lake" and pm.w_per_thread == 3.97
    assert "Cascade Lake (by CPUID family 6 model 85 stepping 7), 3.97 W per busy vCPU" in pm.basis
    # a client chip is never turned into a server microarchitecture by CPUID
    arch, _ = ce.microarchitecture("AMD Ryzen 7 1700", machine("AMD Ryzen 7 1700", vendor="AuthenticAMD",
                                                                family=23, cpu_model=1)["cpuinfo_path"])
    assert arch is None


def test_graviton2_by_arm_cpu_part_and_dmi(machine):
    pm = ce.power_model(env={}, **machine(arm_part="0xd0c", dmi={"sys_vendor": "Amazon EC2",
                                                                  "product_name": "m6g.large"}))
    assert pm.platform == "vm" and pm.microarchitecture == "AWS Graviton2 / Arm Neoverse N1"
    assert pm.w_per_thread == 1.69 and "min 0.47 W" in pm.basis and "Arm CPU part 0xd0c" in pm.basis


def test_ccf_table_is_sane():
    for arch, (lo, hi) in ce.CCF_W_PER_VCPU.items():
        assert 0 < lo < hi < 10, arch
    for label, lo, hi in ce.CCF_PROVIDER_AVERAGE.values():
        assert 0 < lo < hi < 10, label
    lo, hi = ce.CCF_OVERALL_AVERAGE
    avg = ce.CCF_PROVIDER_AVERAGE.values()
    assert lo == pytest.approx(sum(v[1] for v in avg) / 3, abs=0.005)
    assert hi == pytest.approx(sum(v[2] for v in avg) / 3, abs=0.005)


# -- what the collector reports -------------------------------------------------------------------
def test_collector_counts_this_process_only():
    assert ce.CpuEstimateCollector.scope == "process"


def test_sensor_status_carries_the_figure_only_when_set():
    from greenprof.collectors.base import SensorStatus

    plain = SensorStatus("rapl", "cpu-package-0", "measured", True, True).to_dict()
    assert "power_w_per_busy_thread" not in plain and "basis" not in plain
    d = SensorStatus("cpu-estimate", "cpu-estimate", "estimated", True, True,
                     power_w_per_busy_thread=3.97, basis="VM (x): y").to_dict()
    assert d["power_w_per_busy_thread"] == 3.97 and d["basis"] == "VM (x): y"


def test_discover_fills_figure_and_basis():
    (s,) = ce.discover(env={}).statuses
    assert isinstance(s.power_w_per_busy_thread, float) and s.power_w_per_busy_thread > 0
    assert s.basis and "\n" not in s.basis and s.basis in s.detail
    assert s.basis.startswith(("VM (", "bare metal ("))


def test_sensors_json_and_table_show_the_vm_figure(machine, monkeypatch, tmp_path):
    import json

    from typer.testing import CliRunner

    from greenprof.cli import app

    paths = machine(PLATINUM_8259CL, siblings=2, hypervisor=True,
                    dmi={"sys_vendor": "Amazon EC2", "product_name": "m5.large"})
    monkeypatch.setattr(ce, "CPUINFO_PATH", paths["cpuinfo_path"])
    monkeypatch.setattr(ce, "DMI_DIR", paths["dmi_dir"])
    monkeypatch.setattr(ce, "HYPERVISOR_TYPE_PATH", paths["hypervisor_path"])
    for k in ("GREENPROF_VIRT", "GREENPROF_CPU_TDP_W", "GREENPROF_REPLAY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(tmp_path / "no-powercap"))
    r = CliRunner().invoke(app, ["sensors", "--json"])
    assert r.exit_code == 0, r.output
    by = {s["domain"]: s for s in json.loads(r.stdout)["sensors"]}
    est = by["cpu-estimate"]
    assert est["power_w_per_busy_thread"] == 3.97
    assert est["basis"].startswith("VM (hypervisor flag; DMI: Amazon EC2 m5.large): Cascade Lake, 3.97 W")
    assert "\n" not in est["basis"]
    assert "power_w_per_busy_thread" not in by["cpu-package"] and "basis" not in by["cpu-package"]
    r = CliRunner().invoke(app, ["sensors"])
    assert r.exit_code == 0, r.output
    assert "3.97 W/thread; VM (hypervisor flag" in r.stdout  # the table folds long lines


# -- the TDP lookup cache ------------------------------------------------------------------------
GOLD_6248 = "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"


def test_tdp_lookup_is_cached_per_cpu_model_and_table(table, _tdp_cache, monkeypatch):
    assert ce.cached_lookup_tdp(GOLD_6248, table) == ("Intel Xeon Gold 6248", 150.0)
    assert ce.cached_lookup_tdp("Imaginary CPU 9000", table) is None  # a miss is cached too
    doc = __import__("json").loads(_tdp_cache.read_text())
    keys = [__import__("json").loads(k) for k in doc["entries"]]
    assert {k["cpu_model"] for k in keys} == {GOLD_6248, "Imaginary CPU 9000"}
    from importlib.metadata import version

    assert all(k["codecarbon"] == version("codecarbon") and k["table"] == str(table) for k in keys)

    # a new process (here: the in-process memo cleared) answers from the file, never the table
    ce._cached_lookup.cache_clear()

    def no_table(*a, **k):
        raise AssertionError("the table was read although the answer is cached")

    monkeypatch.setattr(ce, "lookup_tdp", no_table)
    assert ce.cached_lookup_tdp(GOLD_6248, table) == ("Intel Xeon Gold 6248", 150.0)
    assert ce.cached_lookup_tdp("Imaginary CPU 9000", table) is None


def test_another_table_is_another_key(table, tmp_path, _tdp_cache):
    """A CodeCarbon upgrade (another table file, size or mtime) never gets a stale answer."""
    assert ce.cached_lookup_tdp(GOLD_6248, table) == ("Intel Xeon Gold 6248", 150.0)
    other = tmp_path / "codecarbon" / "data" / "hardware" / "cpu_power.csv"
    other.parent.mkdir(parents=True)
    other.write_text("Name,TDP\nIntel Xeon Gold 6248,999\n")
    assert ce.cached_lookup_tdp(GOLD_6248, other) == ("Intel Xeon Gold 6248", 999.0)
    other.write_text("Name,TDP\nIntel Xeon Gold 6248,7777\n")  # same path, new contents
    for memo in (ce._cached_lookup, ce.lookup_tdp, ce._table_rows):  # a new process
        memo.cache_clear()
    assert ce.cached_lookup_tdp(GOLD_6248, other) == ("Intel Xeon Gold 6248", 7777.0)
    entries = __import__("json").loads(_tdp_cache.read_text())["entries"]
    assert len(entries) == 3


def test_power_model_uses_the_cache(machine, _tdp_cache):
    pm = ce.power_model(env={}, **machine(GOLD_6248, siblings=40))
    assert pm.tdp_w == 150.0 and _tdp_cache.is_file()
    assert GOLD_6248 in _tdp_cache.read_text()


@pytest.mark.parametrize("junk", ["", "{not json", '{"format": 99, "entries": {}}', "[]",
                                  '{"format": 1, "entries": {"x": 1}}'])
def test_a_damaged_cache_is_ignored_and_rewritten(table, _tdp_cache, junk):
    _tdp_cache.parent.mkdir(parents=True, exist_ok=True)
    _tdp_cache.write_text(junk)
    assert ce.cached_lookup_tdp(GOLD_6248, table) == ("Intel Xeon Gold 6248", 150.0)
    doc = __import__("json").loads(_tdp_cache.read_text())
    assert doc["format"] == 1 and any(GOLD_6248 in k for k in doc["entries"])


def test_a_wrong_cached_answer_of_the_wrong_shape_is_not_trusted(table, _tdp_cache):
    json = __import__("json")
    ce.cached_lookup_tdp(GOLD_6248, table)
    doc = json.loads(_tdp_cache.read_text())
    key = next(iter(doc["entries"]))
    doc["entries"][key] = {"match": ["Intel Xeon Gold 6248", -5]}
    _tdp_cache.write_text(json.dumps(doc))
    ce._cached_lookup.cache_clear()
    assert ce.cached_lookup_tdp(GOLD_6248, table) == ("Intel Xeon Gold 6248", 150.0)


def test_an_unwritable_cache_still_answers(table, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(ce, "TDP_CACHE_PATH", str(blocker / "sub" / "cpu-tdp.json"))  # parent is a file
    ce._cached_lookup.cache_clear()
    assert ce.cached_lookup_tdp(GOLD_6248, table) == ("Intel Xeon Gold 6248", 150.0)
    assert not (blocker / "sub").exists()


def test_default_cache_path_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setattr(ce, "TDP_CACHE_PATH", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ce.tdp_cache_path() == tmp_path / "greenprof" / "cpu-tdp.json"
