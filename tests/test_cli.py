import json
import os
import subprocess
import sys

from powercap_fake import build


def run(*args, env=None):
    e = {**os.environ, **(env or {})}
    e.pop("GREENPROF_REPLAY", None)
    return subprocess.run([sys.executable, "-m", "greenprof.cli", *args], capture_output=True,
                          text=True, env=e, timeout=120)


def test_sensors_json_on_a_machine_without_sensors(tmp_path):
    r = run("sensors", "--json", env={"GREENPROF_POWERCAP_ROOT": str(tmp_path / "none")})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # one JSON document, nothing else on stdout
    by = {s["domain"]: s for s in doc["sensors"]}
    assert doc["estimate_only"] is True
    assert doc["default_set"] == ["cpu-estimate"]
    assert by["cpu-estimate"]["method"] == "estimated"
    assert not by["cpu-package"]["available"] and "powercap" in by["cpu-package"]["why_not"]
    assert {s["source"] for s in doc["sensors"]} >= {"rapl", "nvml", "cpu-estimate", "replay"}


def test_sensors_json_with_a_powercap_tree_reports_measured(tmp_path):
    pc = build(tmp_path, sockets=2, dram=True, core=True, psys=True)
    r = run("sensors", "--json", env={"GREENPROF_POWERCAP_ROOT": str(pc.root)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["estimate_only"] is False
    assert set(doc["default_set"]) == {"cpu-package-0", "cpu-package-1", "dram-0", "dram-1"}
    by = {s["domain"]: s for s in doc["sensors"]}
    assert by["psys"]["available"] and not by["psys"]["in_default_set"]
    assert by["cpu-core-0"]["available"] and not by["cpu-core-0"]["in_default_set"]
    # RAPL measures the CPU, so the estimate is listed but not used
    assert not by["cpu-estimate"]["in_default_set"]


def test_sensors_reads_each_counter_and_names_one_that_does_not_move(tmp_path):
    """The package counter moves at a known power, the DRAM one stands still (some platforms list
    a DRAM domain that never counts): sensors says the first's power and warns about the second."""
    from powercap_fake import CounterWriter

    pc = build(tmp_path, sockets=1, dram=True)
    with CounterWriter(pc.zone("intel-rapl:0"), 20.0):
        r = run("sensors", "--json", env={"GREENPROF_POWERCAP_ROOT": str(pc.root)})
        t = run("sensors", env={"GREENPROF_POWERCAP_ROOT": str(pc.root)})
    assert r.returncode == 0 and t.returncode == 0, r.stderr + t.stderr
    by = {s["domain"]: s for s in json.loads(r.stdout)["sensors"]}
    assert by["cpu-package-0"]["moving"] is True and abs(by["cpu-package-0"]["power_w"] - 20.0) < 2.0
    assert by["dram-0"]["moving"] is False and by["dram-0"]["power_w"] == 0.0
    assert by["cpu-estimate"]["moving"] is None and by["cpu-estimate"]["power_w"] is None  # not a counter
    assert "dram-0's counter did not move" in r.stderr and "cpu-package-0" not in r.stderr
    assert "did not move in the check" in t.stdout and "W now" in t.stdout


def test_sensors_does_not_call_the_estimate_unneeded_when_no_rapl_cpu_counter_moves(tmp_path):
    """RAPL in the default set keeps the CPU estimate out of it, and sensors said "RAPL measures
    the CPU here; the estimate is not needed" although no counter moved (a hypervisor's RAPL):
    measure then read 0 J per token."""
    pc = build(tmp_path, sockets=1, dram=True)  # no writer: every counter stands still
    r = run("sensors", "--json", env={"GREENPROF_POWERCAP_ROOT": str(pc.root)})
    t = run("sensors", env={"GREENPROF_POWERCAP_ROOT": str(pc.root)})
    assert r.returncode == 0 and t.returncode == 0, r.stderr + t.stderr
    (note,) = json.loads(r.stdout)["notes"]
    assert "none of the measured CPU counters (cpu-package-0, dram-0) moved" in note
    assert "--collectors cpu-estimate" in note and "--collectors cpu-estimate" in r.stderr
    assert "the estimate is not needed" not in t.stdout and "use --collectors cpu-estimate" in t.stdout


def test_sensors_table_marks_the_default_set(tmp_path):
    pc = build(tmp_path, sockets=1, dram=False)
    r = run("sensors", env={"GREENPROF_POWERCAP_ROOT": str(pc.root)})
    assert r.returncode == 0
    assert "cpu-package-0" in r.stdout and "in use" in r.stdout


def test_sensors_names_the_unreadable_rapl_file_and_the_fix(tmp_path, monkeypatch):
    """energy_uj is root-only since Linux 5.10; simulated through the collector's open seam
    because chmod does not stop root."""
    import errno

    from typer.testing import CliRunner

    from greenprof.cli import app
    from greenprof.collectors import rapl

    pc = build(tmp_path, sockets=1, dram=False)
    real_open = rapl._open

    def deny(path, *a, **k):
        if str(path).endswith("energy_uj"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(rapl, "_open", deny)
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    r = CliRunner().invoke(app, ["sensors", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    by = {s["domain"]: s for s in doc["sensors"]}
    why = by["cpu-package-0"]["why_not"]
    assert not by["cpu-package-0"]["available"]
    assert "energy_uj" in why and "5.10" in why and "chmod" in why
    assert doc["default_set"] == ["cpu-estimate"]  # fell back to the estimate


def test_help_explains_and_unknown_command_has_no_traceback():
    r = run("--help")
    assert r.returncode == 0 and "sensors" in r.stdout
    r = run("sensors", "--help")
    assert r.returncode == 0 and "--json" in r.stdout
    r = run("frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("greenprof ")


def test_bad_config_is_one_line_exit_2(tmp_path):
    r = run("sensors", env={"GREENPROF_CPU_TDP_W": "lots", "GREENPROF_POWERCAP_ROOT": str(tmp_path)})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "greenprof: error: GREENPROF_CPU_TDP_W='lots' is not a positive number of watts: "
        "set it to your CPU's TDP, e.g. GREENPROF_CPU_TDP_W=65, or unset it"]


def test_import_greenprof_is_cheap_and_has_no_side_effects():
    code = ("import sys, greenprof; heavy = [m for m in ('numpy', 'psutil', 'typer', 'rich', "
            "'onnxruntime', 'pynvml', 'codecarbon', 'greenprof.meter', 'threading') "
            "if m in sys.modules and m != 'threading']; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    # lazy attributes still work
    r = subprocess.run([sys.executable, "-c", "import greenprof; print(greenprof.Meter.__name__)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "Meter"
