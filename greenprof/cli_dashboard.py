"""`greenprof dashboard`: one self-contained HTML report of the run store.

    from greenprof.cli_dashboard import register
    register(app)          # adds the `dashboard` command to a typer app

The report works offline (plotly.js embedded once, no CDN, no web fonts). Its path goes to stdout,
notes to stderr. The command only reads the store: a database file that does not exist yet is not
created; the report then says how to record the first run.

Nothing heavy is imported at import time (plotly and SQLAlchemy load when the command runs).
"""

from __future__ import annotations

from typing import Optional

import typer

# "\\[" keeps rich (typer's help renderer) from reading "[tool.greenprof]" as a markup tag
_DB_HELP = "Database: SQLAlchemy URL or SQLite path (default: GREENPROF_DB, \\[tool.greenprof] db, ./greenprof.db)."
DEFAULT_OUTPUT = "greenprof-report.html"


def dashboard_cmd(
    db: Optional[str] = typer.Option(None, "--db", metavar="URL", help=_DB_HELP),
    output: str = typer.Option(DEFAULT_OUTPUT, "--output", "-o", metavar="FILE",
                               help="Where to write the HTML report (overwritten if it exists)."),
    region: Optional[list[str]] = typer.Option(
        None, "--region", metavar="R",
        help="Also re-cost every model for grid R (e.g. USA/CA, GBR); repeatable. Sweden, France, "
             "US, Germany, Poland and India are always shown."),
    run: Optional[int] = typer.Option(None, "--run", metavar="RUN_ID",
                                      help="Run whose power timeline is drawn (default: the latest "
                                           "completed measure run)."),
) -> None:
    """Write an HTML dashboard of every stored run (works offline) and print its path.

    Charts: J per token vs parameters (95% CI), g CO2e per 1k tokens on several grids, energy per request by phase, a run's power timeline, tokens/s vs J per token with the Pareto front, $ per million tokens vs the GPT-4o mini API price, and a summary table per model. Figures are the energy charged to each run (attributed; gross for runs stored before attribution, in groups of their own), each labelled measured, estimated, replayed or mixed. Partial runs (a domain lost mid-run) are left out of every average and listed apart; uncertain runs are averaged and marked.
    """
    import os
    from pathlib import Path

    from greenprof.cli_runs import _note, _open, _settings, _where
    from greenprof.dashboards import build_report, contrasting_grids, write_report
    from greenprof.errors import GreenprofError, UsageError

    target = Path(output).expanduser()
    if output.strip() in ("", "-"):
        raise UsageError("-o needs a file name (the report is one HTML file)")
    try:
        if target.is_dir():
            raise UsageError(f"-o {output} is a directory: give a file name, e.g. {target / DEFAULT_OUTPUT}")
        if not target.parent.is_dir():
            raise UsageError(f"-o {output}: directory {target.parent} does not exist")
    except OSError as e:  # a name too long for the file system, a loop of links, ...
        raise UsageError(f"-o {output[:80]}{'...' if len(output) > 80 else ''}: {e.strerror or e}") from None
    if run is not None and run < 1:
        raise UsageError(f"--run must be a run id from `greenprof runs` (got {run})")
    regions = list(region or [])
    from greenprof import carbon

    try:
        contrasting_grids(regions)  # an unknown --region fails here, before the database is opened
    except carbon.UnknownRegion as e:
        raise carbon.UnknownRegion(f"--region: {e}") from None
    settings = _settings(db)
    missing = _missing_sqlite_file(settings)
    if missing is not None:
        if run is not None:
            from greenprof.store import RunNotFound

            raise RunNotFound(f"no run {run}: there is no database at {missing} yet")
        from greenprof.dashboards.page import empty_page

        html = empty_page(missing, db, why=f"There is no database at {missing} yet.")
        _note(f"no database at {missing} yet: the report says how to record the first run")
    else:
        from greenprof.store import NoDatabase

        try:
            with _open(settings) as store:
                where = _where(store)
                html = build_report(store, regions=regions, run_id=run, settings=settings, where=where,
                                    db_arg=db)
        except NoDatabase as e:  # an empty file, a server database without greenprof's tables
            if run is not None:
                raise
            from greenprof.dashboards.page import empty_page

            html = empty_page(str(settings.db or "./greenprof.db"), db, why=f"{str(e).split(';')[0]}.")
            _note(f"{e}: the report says how to record the first run")
    try:
        path = write_report(html, target)
    except OSError as e:
        raise GreenprofError(f"cannot write {output}: {e.strerror or e}") from None
    size = len(html.encode("utf-8"))
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    _note(f"report written ({shown}); open it in a browser, no network needed")
    typer.echo(os.path.abspath(path))


def _missing_sqlite_file(settings) -> Optional[str]:
    """The path of the SQLite file the settings point at when it does not exist yet, else None."""
    from greenprof.store import resolve_url
    from greenprof.store.urls import sqlite_path

    origin = settings.origin.get("db", "default")
    if settings.db is None or origin.startswith("env:"):
        u, _ = resolve_url(None)
    elif origin == "flag":
        u, _ = resolve_url(settings.db, setting="--db")
    else:
        u, _ = resolve_url(settings.db, setting=f"{settings.pyproject} [tool.greenprof] db")
    if u.get_backend_name() != "sqlite":
        return None
    path = sqlite_path(u)
    if path is None or path.exists():
        return None
    return str(path)


def register(app: typer.Typer) -> None:
    """Add `dashboard` to ``app``."""
    app.command("dashboard")(dashboard_cmd)


__all__ = ["register", "dashboard_cmd"]
