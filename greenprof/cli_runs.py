"""`greenprof runs | show | export | compare | regions`: read the run store, re-cost, export.

    from greenprof.cli_runs import register
    register(app)          # adds the five commands to a typer app

Every figure is recomputed from the stored joules: carbon from the run's own grid intensity and
PUE (or, with ``runs --region R``, from region R's intensity: a what-if without re-running),
cost from the run's own electricity price. Data goes to stdout, notes to stderr; a user mistake
raises a typed :class:`~greenprof.errors.GreenprofError` with a one-line message, which
``greenprof.cli.main`` prints (exit 2 for usage errors).

This module imports nothing heavy at import time (no SQLAlchemy, no rich): the CLI starts fast.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import typer

if TYPE_CHECKING:
    from greenprof.config import Settings
    from greenprof.store import RunRecord, Store

from greenprof.export import (  # noqa: E402,F401  (the column lists, as before)
    CODECARBON_COLUMNS, CODECARBON_VERSION_WRITTEN, EXPORT_COLUMNS, codecarbon_row, flat_row,
)

_DB_HELP = "Database: SQLAlchemy URL or SQLite path (default: GREENPROF_DB, \\[tool.greenprof] db, ./greenprof.db)."


# -- helpers (imports stay inside) ----------------------------------------------------------------
def _note(msg: str) -> None:
    typer.echo(f"greenprof: {msg}", err=True)


def _settings(db: str | None) -> "Settings":
    from greenprof.config import load_settings

    return load_settings({"db": db})


def _open(settings: "Settings", readonly: bool = True) -> "Store":
    """The store named by --db, GREENPROF_DB or [tool.greenprof] db, else the store's default,
    opened for reading: nothing is created (a database that does not exist is one line, exit 2)
    and a read-only database reads."""
    from greenprof.store import open_store

    origin = settings.origin.get("db", "default")
    if settings.db is None or origin.startswith("env:"):
        # the store reads GREENPROF_DB itself and names it in messages
        return open_store(None, readonly=readonly)
    if origin == "flag":
        return open_store(settings.db, setting="--db", readonly=readonly)
    return open_store(settings.db, setting=f"{settings.pyproject} [tool.greenprof] db", readonly=readonly)


def _where(store: "Store") -> str:
    return str(store.path) if store.path is not None else store.url


def _mark_stale(store: "Store") -> None:
    stale = store.mark_stale_runs()
    if stale:
        ids = ", ".join(str(i) for i in stale)
        _note(f"run{'s' if len(stale) > 1 else ''} {ids} left 'running' by a process that is gone: "
              "reported as interrupted")
    if store.stale_unmarked:
        ids = ", ".join(str(i) for i in store.stale_unmarked)
        _note(f"run{'s' if len(store.stale_unmarked) > 1 else ''} {ids} left 'running' by a process that "
              "is gone (not marked interrupted: the database is read-only here)")


@contextmanager
def _open_marking_stale(settings: "Settings") -> Iterator["Store"]:
    """The store, after reporting runs left 'running' by a process that is gone as interrupted."""
    with _open(settings) as store:
        _mark_stale(store)
        yield store


from greenprof.accounting import (  # noqa: E402
    Costing as _Costing, clean_json, div_or_none, fsum_or_none, is_idle_record, run_summary as summarize,
)


def _flush(costing: _Costing) -> None:
    """Print what costing the runs had to say (e.g. runs without a stored grid intensity)."""
    for n in costing.take_notes():
        _note(n)


def energy_cell(s: dict[str, Any]) -> str:
    """How a run's energy figures are labelled in tables: method, basis, and any flag."""
    if s["energy_j"] is None and s["gross_energy_j"] is None:
        return "no energy recorded"  # e.g. a run that failed before its meter started
    flags = [f for f, on in (("partial", s["partial"]), ("uncertain", bool(s["uncertain"]))) if on]
    return f"{s['method']}, {s['basis']}" + (f" ({', '.join(flags)})" if flags else "")


def session_cell(s: dict[str, Any]) -> str:
    """The onnxruntime settings of a run that differ from the defaults (spinning off, graph
    optimisation all), e.g. ``spinning on``; empty when it ran with the defaults or none apply."""
    parts = []
    if s.get("spinning"):
        parts.append("spinning on")
    if s.get("graph_opt") not in (None, "all"):
        parts.append(f"graph-opt {s['graph_opt']}")
    return ", ".join(parts)


def tokens_cell(s: dict[str, Any]) -> str:
    """``prompt/new``; an interrupted run shows the tokens it generated, with the request."""
    cell = f"{_num(s['prompt_tokens'])}/{_num(s['new_tokens'])}"
    req = s.get("requested_new_tokens")
    if req is not None and req != s["new_tokens"]:
        cell += f" of {req}"
    return cell


def _num(x: Any, fmt: str = ".4g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, fmt)
    return str(x)


def _params(n: int | None) -> str:
    from greenprof.fmt import human_params

    return human_params(n)


def _local(iso: str | None) -> str:
    if not iso:
        return "-"
    from datetime import datetime

    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _console(stderr: bool = False):
    from rich.console import Console

    if stderr:
        return Console(stderr=True, soft_wrap=True)
    # piped or redirected: no wrapped cells (a table is as wide as its content)
    # data, never markup: a run named "x [bold]", a warning quoting "[...]", is printed as it is
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 1000, highlight=False, markup=False)


def _echo_json(doc: Any) -> None:
    import json

    from greenprof.accounting import clean_json

    typer.echo(json.dumps(clean_json(doc), indent=2, default=str, allow_nan=False))


# -- commands -------------------------------------------------------------------------------------
def runs_cmd(
    db: str | None = typer.Option(None, "--db", metavar="URL", help=_DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    region: str | None = typer.Option(
        None, "--region", metavar="R",
        help="Re-cost every run for this grid region (e.g. POL, USA/CA) from its stored joules, "
             "without re-running: a what-if. Default: each run's own stored intensity."),
    limit: int = typer.Option(50, "--limit", metavar="N", help="Show at most N runs, newest first (0 = all)."),
    model: str | None = typer.Option(None, "--model", metavar="NAME", help="Only runs of this model name."),
    host: str | None = typer.Option(None, "--host", metavar="H",
                                    help="Only runs of this host id (GREENPROF_HOST_ID, else the host "
                                         "name plus a hash of its machine id; `greenprof runs --json` "
                                         "shows each run's host)."),
) -> None:
    """List stored runs: energy, J per token and g CO2e, newest first.

    Runs left 'running' by a process that is gone (killed) are reported as interrupted first.
    """
    from greenprof.errors import UsageError

    if limit < 0:
        raise UsageError(f"--limit must be a whole number >= 0 (got {limit})")
    settings = _settings(db)
    what_if = None
    if region is not None:
        from greenprof import carbon

        try:
            what_if = carbon.lookup(region)
        except carbon.UnknownRegion as e:
            raise carbon.UnknownRegion(f"--region: {e}") from None
    costing = _Costing(settings, what_if)
    with _open_marking_stale(settings) as store:
        records = store.list_runs(limit=limit or None, model_name=model, host=host)
        total = store.count_runs(model_name=model, host=host) if limit and len(records) >= limit else len(records)
        where = _where(store)
    rows = [summarize(r, costing) for r in records]
    if total > len(rows):  # never a silent cut: a sum over the listed runs is not the database's
        _note(f"the newest {len(rows)} of {total} runs are listed; --limit 0 lists them all")
    if as_json:
        _echo_json({
            "db": where,
            "total_runs": total,
            "listed_runs": len(rows),
            "runs": rows,
            "region": what_if.region if what_if else None,
            "intensity_g_per_kwh": what_if.intensity_g_per_kwh if what_if else None,
            "intensity_source": what_if.source if what_if else "each run's own stored intensity",
        })
        _flush(costing)
        return
    from rich.table import Table

    co2_head = f"g CO2e @ {what_if.region}" if what_if else "g CO2e"
    shown = f"The newest {len(rows)} of {total} runs" if total > len(rows) else "Runs"
    title = (f"{shown} in {where}" + (f", re-costed for {what_if.region} "
                                   f"({what_if.intensity_g_per_kwh:g} g/kWh)" if what_if else ""))
    table = Table(title=title, title_justify="left")
    settings_col = any(session_cell(s) for s in rows)
    cols = [("id", True), ("started", False), ("status", False), ("model", False),
            ("precision", False), ("params", True), ("prompt/new", True)]
    if settings_col:
        cols.append(("onnxruntime", False))
    cols += [("energy", False), ("J", True), ("J/gen token", True), (co2_head, True), ("region", False)]
    for col, right in cols:
        table.add_column(col, justify="right" if right else "left", overflow="fold")
    from rich.text import Text

    colour = {"completed": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}
    for s in rows:
        st = s["status"]
        cells = [str(s["id"]), _local(s["started_at"]), Text(st, style=colour.get(st, "white")),
                 s["model"] or "-", s["precision"] or "-", _params(s["params"]), tokens_cell(s)]
        if settings_col:
            cells.append(session_cell(s) or "-")
        cells += [energy_cell(s), _num(s["energy_j"]), _num(s["j_per_token"]), _num(s["co2e_g"]),
                  s["region"] or "-"]
        table.add_row(*cells)
    _console().print(table)
    if rows:
        _note("J is the energy charged to each run (attributed: its share of the counters; "
              "'gross' for runs stored before attribution); J/gen token is decode energy per "
              "generated token; `greenprof show RUN_ID` has every phase and domain")
    if not rows:
        _note(f"no runs in {where}" + (f" for model {model!r}" if model else "")
              + (f" on host {host!r}" if host else "") + "; `greenprof measure` records some")
    _flush(costing)


def show_cmd(
    run_id: int = typer.Argument(..., metavar="RUN_ID", help="A run id from `greenprof runs`."),
    db: str | None = typer.Option(None, "--db", metavar="URL", help=_DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Everything stored about one run: host, hardware, software, model, domains, phases, CO2e, cost."""
    settings = _settings(db)
    costing = _Costing(settings)
    with _open_marking_stale(settings) as store:
        run = _get(store, run_id)
        n_samples = store.count_samples(run_id)
    doc = show_data(run, costing, n_samples)
    if as_json:
        _echo_json(doc)
    else:
        render_show(run, doc["summary"], doc["phases"], n_samples)
    _flush(costing)


#: a stored run's field -> its name in every command's JSON (one name, one meaning: `runs`,
#: `measure` and `show`'s summary say ``model`` and ``params``)
_RECORD_NAMES = {"model_name": "model", "param_count": "params"}


def record_document(run: "RunRecord", summary: dict[str, Any]) -> dict[str, Any]:
    """A stored run's own fields as JSON-ready data (show --json, export -f json), without its
    segments, with its ``phases`` (:func:`phases_document`) and ``summary`` (its row as `runs --json`
    gives it), in the names the other commands' JSON uses: ``model``, ``params``, and
    ``domains`` the list of domain names, as in `runs` and `measure`; what is stored per domain
    is ``domain_detail``, where each counter reading is ``gross_energy_j`` beside its
    ``attributed_energy_j``, as everywhere in the JSON (``energy_j`` alone is the energy charged
    to a run)."""
    doc = {_RECORD_NAMES.get(k, k): v for k, v in run.to_dict().items()}
    doc.pop("segments", None)
    detail = doc.pop("domains", None) or {}
    for name, d in list(detail.items()):
        if isinstance(d, dict):
            detail[name] = {("gross_energy_j" if k == "energy_j" else k): v for k, v in d.items()}
    doc["domains"] = list(detail)
    doc["domain_detail"] = detail
    doc["warnings"] = doc.get("warnings") or []  # as measure --json: a list, empty when none
    doc["phases"] = phases_document(run, summary)
    doc["summary"] = summary
    return doc


def phases_document(run: "RunRecord", summary: dict[str, Any]) -> dict[str, Any]:
    """Each phase of a run as `show` and `export -f json` give it: ``energy_j`` the energy charged
    (on the run's basis, as in its summary), ``gross_energy_j`` the counters', per domain in
    ``energy_j_by_domain`` / ``gross_energy_j_by_domain``."""
    phases = {}
    attributed = summary["basis"] == "attributed"
    for kind, p in run.phases.items():
        e = fsum_or_none((p.attributed_energy_j if attributed else p.energy_j).values())
        phases[kind] = {"segments": p.segments, "duration_s": p.duration_s, "tokens": p.tokens,
                        "energy_j": e, "gross_energy_j": fsum_or_none(p.energy_j.values()),
                        "dynamic_energy_j": fsum_or_none(p.dynamic_energy_j.values()),
                        "j_per_token": div_or_none(e, p.tokens),
                        "energy_j_by_domain": p.attributed_energy_j if attributed else p.energy_j,
                        "gross_energy_j_by_domain": p.energy_j}
    return phases


def show_data(run: "RunRecord", costing: _Costing, n_samples: int) -> dict[str, Any]:
    """Everything `show` says about a run, as one JSON-ready document (no printing)."""
    s = summarize(run, costing)
    doc = record_document(run, s)
    doc["segment_count"] = len(run.segments)
    doc["sample_count"] = n_samples
    return doc


def render_show(run: "RunRecord", s: dict[str, Any], phases: dict[str, Any], n_samples: int) -> None:
    """`show`'s tables, from :func:`show_data`'s document."""
    from rich.table import Table

    out = _console()
    info = Table(title=f"Run {run.id}", title_justify="left", show_header=False)
    info.add_column("field", style="bold")
    info.add_column("value", overflow="fold")

    def add(k: str, v: Any) -> None:
        info.add_row(k, "-" if v is None or v == "" else str(v))

    add("status", run.status)
    add("error", run.error)
    add("kind", run.kind)
    if run.parent_run_id is not None:
        add("nested in", f"run {run.parent_run_id} (its energy includes this run's: count it once)")
    add("batch id", run.batch_id)
    add("started", _local(s["started_at"]))
    add("ended", _local(s["ended_at"]))
    add("duration", f"{run.duration_s:.4g} s" if run.duration_s is not None else None)
    add("host", f"{run.host} (pid {run.pid})" if run.pid is not None else run.host)
    hw = run.hardware or {}
    add("hardware", ", ".join(f"{k}={v}" for k, v in hw.items()) if hw else None)
    add("fingerprint", run.hardware_fingerprint)
    add("software", ", ".join(f"{k} {v}" for k, v in (run.software or {}).items()) or None)
    add("model", run.model_name)
    add("shape", run.model_shape)
    add("params", f"{run.param_count:,}" if run.param_count is not None else None)
    add("precision", run.precision)
    add("model hash", run.model_file_hash)
    add("provider", run.provider)
    add("threads", run.threads)
    add("onnxruntime", f"spinning {'on' if s['spinning'] else 'off'}, graph optimisation {s['graph_opt']}"
        + (f", {s['warmup']} warm-up generation{'' if s['warmup'] == 1 else 's'}" if s["warmup"] is not None
           else "") if s["spinning"] is not None or s["graph_opt"] is not None else None)
    add("collectors", run.collectors)
    requested = s["requested_new_tokens"]
    add("tokens", f"{_num(run.prompt_tokens)} prompt, {_num(run.new_tokens)} new"
        + (f" (of {requested} requested)" if requested is not None and requested != run.new_tokens else ""))
    if s["intensity_g_per_kwh"] is not None:
        add("grid", f"{s['intensity_g_per_kwh']:g} g CO2e/kWh ({s['region'] or 'no region'}"
                    f"{', ' + str(s['intensity_year']) if s['intensity_year'] else ''}; "
                    f"{s['intensity_source'] or '?'})")
    else:
        add("grid", s["region"])
    add("pue", f"{s['pue']:g}")
    add("price", f"{s['price_usd_per_kwh']:g} USD/kWh"
        + ("" if run.price_usd_per_kwh is not None else " (not stored: current setting)"))
    add("sampler", f"{run.sample_hz:g} Hz, idle window {run.idle_window_s or 0:g} s"
        if run.sample_hz is not None else None)
    add("segments", len(run.segments))
    add("samples", n_samples)
    for w in run.warnings or []:
        add("warning", w)
    add("energy figures", energy_cell(s))
    if s["energy_j"] is not None:
        dyn = f"; dynamic {_num(s['dynamic_energy_j'])} J above idle" if s["dynamic_energy_j"] is not None else ""
        add("energy", f"{_num(s['energy_j'])} J charged ({s['basis']}); the counters saw "
                      f"{_num(s['gross_energy_j'])} J (gross{dyn})")
        if s["other_cpu_share"] is not None:
            add("other load", f"other processes used {s['other_cpu_share']:.0%} of the machine's busy CPU time")
        add("CO2e", f"{_num(s['co2e_g'])} g")
        add("cost", f"{_num(s['cost_usd'])} USD")
    else:
        add("energy", "none recorded")
    for d, why in s["lost"].items():
        add("lost (partial)", f"{d}: {why}; its energy until then is kept")
    for d, why in s["uncertain"].items():
        add("uncertain", f"{d}: {why}")
    add("J / generated token (decode)", _num(s["j_per_token"]))
    if s["dynamic_j_per_token"] is not None and run.idle_window_s:
        from greenprof.measure import dynamic_note

        dyn = _num(s["dynamic_j_per_token"])
        add("dynamic J / generated token",
            dyn if s["dynamic_j_per_token"] > 0 else f"{dyn} ({dynamic_note(s['dynamic_j_per_token'], None)})")
    add("J / prompt token", _num(s["j_per_prompt_token"]))
    add("J / request (all phases)", _num(s["j_per_request"]))
    if is_idle_record(run):
        add("phases", "none: an idle period of `greenprof serve` (its energy between requests, no request's)")
    elif not s["phases_marked"] and s["energy_j"] is not None:
        add("phases", "no phase marks: the whole run counts as decode")
    add("tokens / s", _num(s["tokens_per_s"]))
    add("g CO2e / 1k tokens", _num(s["co2e_g_per_1k_tokens"]))
    add("USD / M tokens", _num(s["usd_per_m_tokens"]))
    out.print(info)

    dom = Table(title="Domains", title_justify="left")
    for col in ("domain", "method", "scope", "gross J", "attributed J", "share", "idle W", "dynamic J", "note"):
        dom.add_column(col, overflow="fold", justify="right" if col.endswith(("J", "W", "share")) else "left")
    for d, r in run.domains.items():
        note = "; ".join(x for x in (f"lost (partial): {r.lost_reason}" if r.lost_reason else "",
                                     f"uncertain: {r.uncertain_reason}" if r.uncertain_reason else "",
                                     r.share_note or "") if x)
        dom.add_row(d, r.method or "-", r.scope or "-", _num(r.energy_j), _num(r.attributed_energy_j),
                    _num(r.share, ".3f"), _num(r.idle_power_w), _num(r.dynamic_energy_j), note)
    out.print(dom)
    if phases:
        ph = Table(title="Phases", title_justify="left")
        for col in ("phase", "segments", "duration s", "tokens", f"{s['basis']} J", "gross J", "J/token"):
            ph.add_column(col, justify="left" if col == "phase" else "right")
        for kind in ("setup", "prefill", "decode", "teardown", "other"):
            p = phases.get(kind)
            if p is None:
                continue
            ph.add_row(kind, str(p["segments"]), _num(p["duration_s"]), _num(p["tokens"]),
                       _num(p["energy_j"]), _num(p["gross_energy_j"]), _num(p["j_per_token"]))
        out.print(ph)


def _get(store: "Store", run_id: int) -> "RunRecord":
    from greenprof.store import RunNotFound

    try:
        return store.get_run(run_id)
    except RunNotFound:
        raise RunNotFound(f"no run {run_id} in {_where(store)}; see `greenprof runs`") from None


def export_cmd(
    fmt: str = typer.Option("csv", "--format", "-f", metavar="csv|json",
                            help="csv (one row per run) or json (one document)."),
    codecarbon: bool = typer.Option(
        False, "--codecarbon",
        help=f"Write CodeCarbon's emissions.csv columns (CodeCarbon {CODECARBON_VERSION_WRITTEN}) "
             "so tools that read CodeCarbon output read greenprof runs."),
    output: str | None = typer.Option(None, "--output", "-o", metavar="FILE",
                                      help="Write to FILE instead of stdout."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing -o FILE."),
    db: str | None = typer.Option(None, "--db", metavar="URL", help=_DB_HELP),
) -> None:
    """Export every run: CSV or JSON, or CodeCarbon's emissions.csv format."""
    import csv
    import io
    import json
    import os
    from datetime import datetime, timezone
    from pathlib import Path

    from greenprof import __version__
    from greenprof.errors import GreenprofError, UsageError

    fmt = fmt.strip().lower()
    if fmt not in ("csv", "json"):
        raise UsageError(f"--format/-f must be csv or json (got {fmt!r})")
    if codecarbon and fmt != "csv":
        raise UsageError("--codecarbon writes CodeCarbon's emissions.csv: use it with --format csv")
    target: Path | None = None
    if output is not None and output != "-":
        target = Path(output).expanduser()
        if target.is_dir():
            raise UsageError(f"-o {output} is a directory: give a file name")
        if not target.parent.is_dir():
            raise UsageError(f"-o {output}: directory {target.parent} does not exist")
        if target.exists() and not force:
            raise UsageError(f"{output} exists: pass --force to overwrite it")
    settings = _settings(db)
    costing = _Costing(settings)
    with _open_marking_stale(settings) as store:
        records = store.list_runs(limit=None)
        where = _where(store)
    records.sort(key=lambda r: r.id)  # oldest first, as a log file grows
    buf = io.StringIO(newline="")
    written = len(records)
    if codecarbon:
        kept = [r for r in records if any(d.energy_j is not None for d in r.domains.values())]
        if len(kept) < len(records):
            skipped = len(records) - len(kept)
            _note(f"{skipped} run{'s' if skipped > 1 else ''} without any energy (failed before "
                  "measuring, or still running) left out of the CodeCarbon export")
        # a run nested in another exported here is in that run's energy: CodeCarbon's rows are
        # summed (its emissions.csv has one row per tracker), so it would be counted twice
        ids = {r.id for r in kept}
        nested = [r for r in kept if r.parent_run_id is not None and r.parent_run_id in ids]
        if nested:
            kept = [r for r in kept if r not in nested]
            _note(f"{len(nested)} nested run{'s' if len(nested) > 1 else ''} left out of the CodeCarbon "
                  f"export: {'their' if len(nested) > 1 else 'its'} energy is in the run "
                  f"{'they' if len(nested) > 1 else 'it'} ran inside (see parent_run_id in `runs --json`)")
        written = len(kept)
        w = csv.DictWriter(buf, fieldnames=list(CODECARBON_COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in kept:
            w.writerow(codecarbon_row(r, summarize(r, costing)))
    elif fmt == "csv":
        w = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in records:
            w.writerow(flat_row(summarize(r, costing)))
    else:
        runs = []
        for r in records:
            runs.append(record_document(r, summarize(r, costing)))
        doc = {"greenprof_version": __version__, "db": where,
               "exported_at": datetime.now(timezone.utc).isoformat(), "runs": runs}
        # JSON has no NaN or infinity (an overflowing figure is null, as in runs --json)
        buf.write(json.dumps(clean_json(doc), indent=2, default=str, allow_nan=False) + "\n")
    text = buf.getvalue()
    if target is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            with open(target, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        except OSError as e:
            raise GreenprofError(f"cannot write {output}: {e.strerror or e}") from None
        _note(f"wrote {written} run{'' if written == 1 else 's'} to {os.fspath(target)}")
    _flush(costing)


_COMPARE = (
    # key, label, ratio?
    ("kind", "kind", False),
    ("host", "host", False),
    ("model", "model", False),
    ("params", "params", True),
    ("precision", "precision", False),
    ("spinning", "onnxruntime spinning", False),
    ("graph_opt", "graph optimisation", False),
    ("warmup", "warm-up passes", False),
    ("batch_size", "batch size (sequences)", True),
    ("method", "method", False),
    ("basis", "basis", False),
    ("domains", "domains", False),
    ("region", "region", False),
    ("prompt_tokens", "prompt tokens", True),
    ("new_tokens", "generated tokens", True),
    ("duration_s", "duration s", True),
    ("energy_j", "energy J (charged)", True),
    ("gross_energy_j", "energy J (gross)", True),
    ("tokens_per_s", "tokens/s", True),
    ("j_per_token", "J / generated token (decode)", True),
    ("j_per_prompt_token", "J / prompt token", True),
    ("j_per_request", "J / request (all phases)", True),
    ("co2e_g_per_1k_tokens", "g CO2e / 1k tokens", True),
    ("usd_per_m_tokens", "USD / M tokens", True),
)


#: rows left out of the table when neither run has a value (track runs have no model session)
_COMPARE_OPTIONAL = {"host", "params", "precision", "spinning", "graph_opt", "warmup", "batch_size",
                     "prompt_tokens"}


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == 0:
        return None
    return b / a


def _x(r: float) -> str:
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def compare_cmd(
    run_a: int = typer.Argument(..., metavar="RUN_ID_A", help="The baseline run (A)."),
    run_b: int = typer.Argument(..., metavar="RUN_ID_B", help="The run compared with it (B)."),
    db: str | None = typer.Option(None, "--db", metavar="URL", help=_DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Two runs side by side, with ratios B/A (per-token energy, speed, CO2e, cost)."""
    settings = _settings(db)
    costing = _Costing(settings)
    with _open_marking_stale(settings) as store:
        a, b = _get(store, run_a), _get(store, run_b)
    sa, sb = summarize(a, costing), summarize(b, costing)
    ratios = {k: _ratio(sa[k], sb[k]) for k, _, r in _COMPARE if r}
    sentences = []
    if ratios["j_per_token"] is not None:
        sentences.append(f"B (run {b.id}) uses {_x(ratios['j_per_token'])} the energy per generated "
                         f"token of A (run {a.id})")
    if ratios["tokens_per_s"] is not None:
        sentences.append(f"B generates {_x(ratios['tokens_per_s'])} the tokens per second of A")
    if ratios["co2e_g_per_1k_tokens"] is not None:
        sentences.append(f"B emits {_x(ratios['co2e_g_per_1k_tokens'])} the CO2e per token of A"
                         + (f" ({sb['region']} vs {sa['region']} grid)" if sa["region"] != sb["region"] else ""))
    notes = []
    if sa["method"] != sb["method"] or sa["basis"] != sb["basis"]:
        notes.append(f"A is {sa['method']} ({sa['basis']}), B is {sb['method']} ({sb['basis']}): the "
                     "ratios compare different kinds of figure")
    differ = [what for key, what in (("spinning", "spinning"), ("graph_opt", "graph optimisation"),
                                     ("warmup", "warm-up passes")) if sa[key] != sb[key]]
    if differ:
        notes.append(f"A and B ran with different settings ({', '.join(differ)})")
    if (sa["batch_size"] or 1) != (sb["batch_size"] or 1):
        notes.append(f"A ran batches of {sa['batch_size'] or 1} sequences and B of {sb['batch_size'] or 1}: "
                     "per-token figures count every sequence's tokens")
    if sa["status"] == "completed" and sb["status"] == "completed" and is_idle_record(a) != is_idle_record(b):
        notes.append("one of them is an idle period of `greenprof serve`, not a request: its energy is "
                     "no request's")
    for x in (sa, sb):
        if x["partial"]:
            notes.append(f"run {x['id']} lost {', '.join(x['lost_domains'])} mid-run: its energy is partial")
        if x["uncertain"]:
            notes.append(f"run {x['id']}: {', '.join(x['uncertain_domains'])} uncertain (a counter may "
                         "have missed a wrap or not updated in the run: see `greenprof show`)")
    if a.hardware_fingerprint and b.hardware_fingerprint and a.hardware_fingerprint != b.hardware_fingerprint:
        notes.append("A and B ran on different hardware")
    for s in (sa, sb):
        if s["status"] != "completed":
            notes.append(f"run {s['id']} is {s['status']}: " + ("its figures cover part of the work"
                         if s["gross_energy_j"] is not None else "it has no energy recorded, so no ratio"))
    if as_json:
        _echo_json({"a": sa, "b": sb, "ratios_b_over_a": ratios, "summary": sentences, "notes": notes})
    else:
        from rich.table import Table

        table = Table(title=f"Run {a.id} (A) vs run {b.id} (B)", title_justify="left")
        table.add_column("")
        table.add_column(f"A: run {a.id}", justify="right", overflow="fold")
        table.add_column(f"B: run {b.id}", justify="right", overflow="fold")
        table.add_column("B/A", justify="right")
        for key, label, has_ratio in _COMPARE:
            va, vb = sa[key], sb[key]
            if va is None and vb is None and key in _COMPARE_OPTIONAL:
                continue  # e.g. the onnxruntime settings of two track runs
            if key == "params":
                ta, tb = _params(va), _params(vb)
            elif key == "domains":
                ta, tb = ", ".join(va) or "-", ", ".join(vb) or "-"
            elif key == "spinning":
                ta, tb = ("-" if v is None else "on" if v else "off" for v in (va, vb))
            else:
                ta, tb = _num(va) if va is not None else "-", _num(vb) if vb is not None else "-"
            r = ratios.get(key) if has_ratio else None
            table.add_row(label, ta, tb, _x(r) if r is not None else "")
        out = _console()
        out.print(table)
        for line in sentences:
            out.print(line)
    for n in notes:
        _note(n)
    _flush(costing)


def regions_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    search: str | None = typer.Option(None, "--search", "-s", metavar="TEXT",
                                      help="Only regions whose code or name contains TEXT."),
) -> None:
    """List the grid carbon intensities greenprof knows (CodeCarbon's data), for --region."""
    from greenprof import carbon

    rows = carbon.regions()
    if search is not None:
        needle = carbon._norm(search)
        rows = [g for g in rows if needle in carbon._norm(g.region) or needle in carbon._norm(g.name)]
    if as_json:
        _echo_json({"count": len(rows), "search": search,
                    "regions": [{"region": g.region, "name": g.name,
                                 "intensity_g_per_kwh": g.intensity_g_per_kwh,
                                 "year": g.year, "source": g.source} for g in rows]})
    else:
        from rich.table import Table

        table = Table(title="Grid carbon intensity (location-based)", title_justify="left")
        for col, right in (("region", False), ("name", False), ("g CO2e/kWh", True), ("year", True),
                           ("source", False)):
            table.add_column(col, justify="right" if right else "left", overflow="fold")
        for g in rows:
            table.add_row(g.region, g.name, f"{g.intensity_g_per_kwh:.1f}", _num(g.year),
                          g.source.split(" (")[0])
        _console().print(table)
    if not rows:
        _note(f"no region matches {search!r}; `greenprof regions` lists them all")


def register(app: typer.Typer) -> None:
    """Add `runs`, `show`, `export`, `compare` and `regions` to ``app``."""
    app.command("runs")(runs_cmd)
    app.command("show")(show_cmd)
    app.command("export")(export_cmd)
    app.command("compare")(compare_cmd)
    app.command("regions")(regions_cmd)


__all__ = ["register", "summarize", "energy_cell", "CODECARBON_COLUMNS", "EXPORT_COLUMNS"]
