"""What `greenprof export` writes: its own CSV columns (one row per run) and CodeCarbon's
emissions.csv columns, mapped from a run's summary (greenprof.accounting.run_summary)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greenprof.accounting import J_PER_KWH

if TYPE_CHECKING:
    from greenprof.store import RunRecord

#: CodeCarbon's emissions.csv columns, in the order CodeCarbon writes them: the fields of the
#: ``EmissionsData`` dataclass in codecarbon/output_methods/emissions_data.py, CodeCarbon 3.3.2
#: (FileOutput writes ``pandas.DataFrame.from_records([dict(EmissionsData.values)])``, so the
#: header is exactly the dataclass fields in declaration order). Written out here rather than
#: read from codecarbon, which is never imported at run time; tests/test_cli_runs.py checks this
#: list against the installed CodeCarbon source so a drift fails the tests.
CODECARBON_COLUMNS = (
    "timestamp", "project_name", "run_id", "experiment_id", "duration", "emissions",
    "emissions_rate", "cpu_power", "gpu_power", "ram_power", "cpu_energy", "gpu_energy",
    "ram_energy", "energy_consumed", "water_consumed", "country_name", "country_iso_code",
    "region", "cloud_provider", "cloud_region", "os", "python_version", "codecarbon_version",
    "cpu_count", "cpu_model", "gpu_count", "gpu_model", "longitude", "latitude",
    "ram_total_size", "tracking_mode", "cpu_utilization_percent", "gpu_utilization_percent",
    "ram_utilization_percent", "ram_used_gb", "on_cloud", "pue", "wue",
)
CODECARBON_VERSION_WRITTEN = "3.3.2"

#: Columns of `greenprof export --format csv` (one row per run).
EXPORT_COLUMNS = (
    "id", "parent_run_id", "batch_id", "kind", "status", "started_at", "ended_at", "host", "model", "model_shape",
    "params", "precision", "model_file_hash", "provider", "threads", "spinning", "graph_opt", "warmup",
    "prompt_tokens", "new_tokens", "requested_new_tokens", "batch_size", "collectors", "domains", "method", "methods", "basis",
    "duration_s", "energy_j", "gross_energy_j", "energy_j_by_domain", "gross_energy_j_by_domain", "share",
    "dynamic_energy_j", "setup_energy_j", "prefill_energy_j", "decode_energy_j", "teardown_energy_j",
    "phases_marked", "prefill_tokens", "decode_tokens", "j_per_prompt_token", "j_per_token",
    "j_per_request", "dynamic_j_per_token", "tokens_per_s", "partial", "lost_domains", "uncertain_domains",
    "other_cpu_share", "region", "intensity_g_per_kwh", "intensity_source", "intensity_year", "pue", "co2e_g",
    "co2e_g_per_1k_tokens", "co2e_g_per_request", "price_usd_per_kwh", "cost_usd", "usd_per_m_tokens",
    "usd_per_request", "error",
)


def codecarbon_row(run: "RunRecord", s: dict[str, Any]) -> dict[str, Any]:
    """One emissions.csv row, in CodeCarbon's units: energy in kWh, power in W, emissions in kg.

    As in CodeCarbon (EmissionsTracker._do_measurements multiplies power and energy by the PUE),
    the power and energy columns include the PUE, so emissions = energy_consumed x intensity.
    """
    from greenprof import carbon

    pue = s["pue"]
    groups = {"cpu": 0.0, "gpu": 0.0, "ram": 0.0}
    for d, j in s["energy_j_by_domain"].items():  # the energy charged to the run
        if j is None:
            continue
        d = d.split(":", 1)[1] if d.startswith("replay:") else d  # a replayed trace's "replay:cpu"
        if d.startswith("cpu") or d == "psys":  # cpu-package-N, cpu-estimate
            groups["cpu"] += j
        elif d.startswith("gpu"):
            groups["gpu"] += j
        elif d.startswith(("dram", "ram")):
            groups["ram"] += j
    dur = run.duration_s
    total = s["energy_j"] or 0.0

    def power(j: float) -> float | str:
        return j * pue / dur if dur else ""

    kg = (s["co2e_g"] or 0.0) / 1000.0
    iso, country, sub = "", "", ""
    reg = s["region"] or ""
    if reg and reg not in ("WORLD", "USER"):
        iso = reg.split("/", 1)[0]
        try:
            country = carbon.lookup(iso).name
        except Exception:
            country = ""
        if "/" in reg:
            try:
                sub = carbon.lookup(reg).name.split(",")[0].strip().lower()
            except Exception:
                sub = reg.split("/", 1)[1]
    hw = run.hardware or {}
    sw = run.software or {}
    gpus = [str(g) for g in hw.get("gpus") or []]
    counts: dict[str, int] = {}
    for g in gpus:
        counts[g] = counts.get(g, 0) + 1
    methods = {r.method for r in run.domains.values() if r.method}
    when = run.ended_at or run.started_at
    return {
        # CodeCarbon writes datetime.now().strftime("%Y-%m-%dT%H:%M:%S") (local time) at the end
        "timestamp": when.astimezone().strftime("%Y-%m-%dT%H:%M:%S"),
        "project_name": "greenprof",
        "run_id": str(run.id),
        "experiment_id": run.batch_id or "",
        "duration": dur if dur is not None else "",
        "emissions": kg,
        "emissions_rate": kg / dur if dur else "",
        "cpu_power": power(groups["cpu"]),
        "gpu_power": power(groups["gpu"]),
        "ram_power": power(groups["ram"]),
        "cpu_energy": groups["cpu"] * pue / J_PER_KWH,
        "gpu_energy": groups["gpu"] * pue / J_PER_KWH,
        "ram_energy": groups["ram"] * pue / J_PER_KWH,
        "energy_consumed": total * pue / J_PER_KWH,
        "water_consumed": 0.0,  # water is not tracked; CodeCarbon's default wue=0 gives 0 too
        "country_name": country,
        "country_iso_code": iso,
        "region": sub,
        "cloud_provider": "",
        "cloud_region": "",
        "os": sw.get("os", ""),
        "python_version": sw.get("python", ""),
        # the version of CodeCarbon whose format the row follows (readers parse it as a version);
        # greenprof's own version is in `greenprof export --format json` (software.greenprof)
        "codecarbon_version": CODECARBON_VERSION_WRITTEN,
        "cpu_count": hw.get("cpu_logical", ""),
        "cpu_model": hw.get("cpu_model", ""),
        "gpu_count": len(gpus),
        "gpu_model": ", ".join(f"{n} x {name}" for name, n in counts.items()),
        "longitude": "",
        "latitude": "",
        "ram_total_size": hw.get("memory_gib", ""),
        # the CPU estimate charges this process's CPU time; counters see the whole machine
        "tracking_mode": "process" if "estimated" in methods or s["basis"] == "attributed" else "machine",
        "cpu_utilization_percent": "",
        "gpu_utilization_percent": "",
        "ram_utilization_percent": "",
        "ram_used_gb": "",
        "on_cloud": "N",
        "pue": pue,
        "wue": 0,
    }


def flat_row(s: dict[str, Any]) -> dict[str, Any]:
    row = {k: s.get(k) for k in EXPORT_COLUMNS}
    for key in ("methods", "energy_j_by_domain", "gross_energy_j_by_domain", "share"):
        row[key] = ";".join(f"{d}={v}" for d, v in sorted(s[key].items()))
    for key in ("domains", "lost_domains", "uncertain_domains"):
        row[key] = ";".join(s[key])
    return {k: "" if v is None else v for k, v in row.items()}
