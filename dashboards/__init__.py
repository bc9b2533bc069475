"""Plotly sustainability dashboard (reads the store only).

    from greenprof.dashboards import build_report, write_report
    html = build_report(store, regions=["USA/CA"], run_id=None)   # one self-contained HTML page
    write_report(html, "greenprof-report.html")

The page embeds plotly.js once and makes no network request (a Content-Security-Policy forbids
it). Every figure comes from :mod:`greenprof.accounting` over the store's runs (:mod:`.queries`:
``Store.list_runs`` plus ``record_figures`` per run, ``interval95`` per model), on the attributed
basis unless a run has only gross energy, and says whether its energy is measured, estimated,
replayed or mixed. Partial runs are left out of every average and listed on their own. The power
timeline is downsampled by the database, so thousands of runs and millions of samples render in
seconds. ``greenprof dashboard`` is the command-line shell.

Nothing heavy is imported here: plotly and SQLAlchemy load when a report is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from greenprof.carbon import GridIntensity
    from greenprof.config import Settings
    from greenprof.store import Store

#: Contrasting grids every report re-costs the runs for (ISO 3166-1 alpha-3).
DEFAULT_GRIDS = ("SWE", "FRA", "USA", "DEU", "POL", "IND")

#: At most this many points per domain in the power timeline (bucketed by the database).
TIMELINE_POINTS = 1000


def contrasting_grids(extra: Iterable[str] = ()) -> tuple[list["GridIntensity"], list[str]]:
    """The default grids plus ``extra`` regions (each looked up; an unknown one raises
    :class:`greenprof.carbon.UnknownRegion`), without duplicates; and notes."""
    from greenprof import carbon
    from greenprof.errors import GreenprofError

    grids: list[carbon.GridIntensity] = []
    notes: list[str] = []
    extra = list(extra)
    user = [carbon.lookup(r) for r in extra]  # a user mistake fails before any work
    for code in DEFAULT_GRIDS:
        try:
            grids.append(carbon.lookup(code))
        except GreenprofError as e:  # CodeCarbon's data missing or incomplete
            notes.append(f"grid {code} left out: {e}")
    for g in user:
        if all(g.region != have.region for have in grids):
            grids.append(g)
    return grids, notes


def build_report(store: "Store", *, regions: Sequence[str] = (), run_id: int | None = None,
                 settings: "Settings | None" = None, where: str | None = None,
                 db_arg: str | None = None) -> str:
    """The dashboard of everything in ``store`` as one HTML document.

    ``regions``: grids to re-cost for besides :data:`DEFAULT_GRIDS`. ``run_id``: the run whose
    power timeline is drawn (default: the latest completed ``measure`` run). ``settings``: the
    fallback grid and price for runs that stored none (default: :func:`greenprof.config.load_settings`).
    An empty database gives a page that says how to record the first run (``db_arg``: the
    ``--db`` value to repeat in its example commands).
    """
    from greenprof.config import load_settings, resolve_intensity

    from . import page, queries

    settings = settings or load_settings()
    grids, notes = contrasting_grids(regions)
    fallback, fallback_note = resolve_intensity(settings)
    price = float(settings.price_usd_per_kwh)
    where = where or (str(store.path) if store.path is not None else store.url)
    ov = queries.overview(store, fallback_intensity=fallback.intensity_g_per_kwh, fallback_price=price)
    something = bool(ov.models or ov.partial_runs)
    if run_id is not None:
        timeline = queries.run_timeline(store, int(run_id), TIMELINE_POINTS)  # RunNotFound if absent
    elif not something:
        timeline = None
    else:
        rid = queries.default_timeline_run(store, ov.runs)
        timeline = queries.run_timeline(store, rid, TIMELINE_POINTS) if rid is not None else None
    if not something:
        return page.empty_page(where, db_arg, runs=ov.total_runs)
    unpriced = sum(m.unpriced_runs for m in ov.models)
    if unpriced:
        notes.append(f"{unpriced} run(s) stored no grid intensity: costed at {fallback.region} "
                     f"({fallback.intensity_g_per_kwh:g} g/kWh) from the current settings"
                     + (f" ({fallback_note})" if fallback_note else ""))
    if ov.partial_runs:
        ids = [r.id for r in ov.partial_runs]
        notes.append(f"{len(ids)} partial run(s) left out of every average and chart (an energy domain was "
                     f"lost mid-run, so their energy stops at the loss): run(s) {_ids(ids)}, listed under "
                     "'Partial and uncertain runs'")
    uncertain = [r.id for r in ov.uncertain_runs if r.charted]
    if uncertain:
        notes.append(f"{len(uncertain)} run(s) in the averages have an uncertain domain (a counter may have "
                     f"wrapped unseen): run(s) {_ids(uncertain)}; their groups are marked 'uncertain'")
    if ov.gross_runs:
        notes.append(f"{ov.gross_runs} charted run(s) were stored before attribution existed: their figures "
                     "are gross (what the counters saw, the whole device), labelled 'gross' and grouped apart "
                     "from attributed runs, never averaged with them")
    skipped = ov.total_runs - ov.used_runs - len(ov.partial_runs)
    if skipped:
        notes.append(f"{skipped} run(s) not charted: failed, interrupted, still running, or without "
                     "per-token (decode) segments")
    timeline_note = None
    if timeline is None:
        timeline_note = "No completed measure run with a power timeline."
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        from greenprof.errors import GreenprofError

        raise GreenprofError("the dashboard needs plotly (its JavaScript is embedded in the page): "
                             "pip install plotly") from None

    from greenprof.ladder import api_references

    fits = queries.size_fits(ov.models, intensity_g_per_kwh=fallback.intensity_g_per_kwh,
                             pue=float(settings.pue), price_usd_per_kwh=price)
    references, ref_notes = api_references(fallback.intensity_g_per_kwh, fallback.region)
    notes.extend(ref_notes)
    return page.full_page(where=where, ov=ov, grids=grids, fallback=fallback, timeline=timeline,
                          timeline_note=timeline_note, notes=notes, plotly_js=get_plotlyjs(),
                          fits=fits, references=references)


def _ids(ids: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def write_report(html: str, path: str | os.PathLike) -> str:
    """Write ``html`` to ``path`` (atomically: a reader never sees half a file); returns the path.

    A symlink is written through (the file it points to is replaced, the link stays); a device or
    a FIFO (``/dev/stdout``, a pipe) is written into, never replaced by a regular file."""
    import stat
    import tempfile
    from pathlib import Path

    target = Path(path)
    if target.is_symlink():
        target = target.resolve()
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(target, "w", encoding="utf-8") as f:
            f.write(html)
        return os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".greenprof-report-", suffix=".html", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(html)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have created it
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return os.fspath(path)


__all__ = ["build_report", "write_report", "contrasting_grids", "DEFAULT_GRIDS"]
