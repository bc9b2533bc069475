"""The self-contained HTML page: plotly.js inlined once, figures as escaped JSON, no network.

Every string written into HTML goes through :func:`html.escape`; figure JSON is embedded in a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` written as ``\\u003c``...
so no stored value can close the block or start markup. A Content-Security-Policy meta tag forbids
every external request (scripts, styles, fonts, images, fetch/XHR): the page works offline and
would stay offline even if a value slipped through.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from greenprof.accounting import clean_json

from . import figures as F

if TYPE_CHECKING:
    from greenprof.carbon import GridIntensity

    from .queries import ModelAggregate, Overview, RunRow, RunTimeline, SizeFit

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; base-uri 'none'; form-action 'none'")

CSS = """
:root { --fg: #222; --muted: #666; --line: #e3e3e3; --bg: #f6f7f9; --card: #fff; --accent: #2b7a3d; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #1e3d2a; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .meta { color: #cfe3d4; font-size: 13px; }
header code { color: #fff; }
main { padding: 18px 28px 40px; max-width: 1600px; margin: 0 auto; }
.headline { font-size: 17px; font-weight: 600; margin: 2px 0 14px; color: #1e3d2a; }
.notes { background: #fff8e1; border: 1px solid #f0d98c; border-radius: 6px; padding: 8px 14px; margin-bottom: 16px; }
.notes li { margin: 2px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(620px, 1fr)); gap: 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; min-width: 0; }
.card.wide { grid-column: 1 / -1; }
.card h2 { font-size: 16px; margin: 0 0 4px; }
.card p.caption { color: var(--muted); margin: 0 0 8px; font-size: 12.5px; }
.chart { width: 100%; min-height: 420px; }
.placeholder { color: var(--muted); padding: 40px 10px; text-align: center; border: 1px dashed var(--line); border-radius: 6px; }
table.summary { border-collapse: collapse; width: 100%; font-size: 12.5px; }
table.summary th, table.summary td { border-bottom: 1px solid var(--line); padding: 5px 6px; text-align: left; vertical-align: top; }
table.summary td.model { min-width: 9em; max-width: 16em; overflow-wrap: anywhere; font-weight: 600; }
table.summary td.hw { min-width: 10em; max-width: 18em; }
table.summary th { background: #f0f2f4; position: sticky; top: 0; }
table.summary td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary .small { color: var(--muted); font-size: 11.5px; }
.table-wrap { overflow-x: auto; }
.badge { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11.5px; border: 1px solid; }
.badge.measured { color: #1b5e20; border-color: #81c784; background: #e8f5e9; }
.badge.estimated { color: #8a5300; border-color: #ffb74d; background: #fff3e0; }
.badge.replayed, .badge.mixed, .badge.none { color: #37474f; border-color: #b0bec5; background: #eceff1; }
.badge.attributed { color: #0d47a1; border-color: #90caf9; background: #e3f2fd; }
.badge.gross { color: #4e342e; border-color: #bcaaa4; background: #efebe9; }
.badge.partial { color: #b71c1c; border-color: #ef9a9a; background: #ffebee; }
.badge.uncertain { color: #6a1b9a; border-color: #ce93d8; background: #f3e5f5; }
.empty { max-width: 760px; margin: 40px auto; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 24px 28px; }
.empty pre { background: #f0f2f4; padding: 10px 12px; border-radius: 6px; white-space: pre-wrap; overflow-wrap: anywhere; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
"""

BOOT = """
(function () {
  var figs = JSON.parse(document.getElementById("greenprof-figures").textContent);
  var config = {displaylogo: false, displayModeBar: "hover", responsive: true, showLink: false, showSendToCloud: false,
                toImageButtonOptions: {format: "png", filename: "greenprof-chart"}};
  var done = Object.keys(figs).map(function (id) {
    return Plotly.newPlot(id, figs[id].data, figs[id].layout, config);
  });
  Promise.all(done).then(function () { document.body.setAttribute("data-rendered", "true"); },
                         function (e) { document.body.setAttribute("data-rendered", "error");
                                        console.error("greenprof dashboard: " + e); });
})();
"""


def _json_for_html(obj: Any) -> str:
    """JSON that is safe inside a <script> block: no ``<``, ``>``, ``&`` or line separators."""
    # NaN and infinities become null (JSON has no NaN; plotly.js draws a gap)
    text = json.dumps(clean_json(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _head(title: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{escape(CSP)}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
    )


def _header(where: str, subtitle: str) -> str:
    from greenprof import __version__

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<header><h1>greenprof: energy and carbon per token</h1>"
            f"<div class=\"meta\">database <code>{escape(where)}</code> · {escape(subtitle)} · "
            f"generated {escape(now)} by greenprof {escape(__version__)}</div></header>\n")


def empty_page(where: str, db_arg: str | None = None, *, runs: int = 0, why: str | None = None) -> str:
    """The page for a database with nothing to chart: how to record the first run."""
    db = f" --db {_shell_quote(db_arg)}" if db_arg else ""
    if runs:
        lead = (f"The database holds {runs} run{'s' if runs != 1 else ''}, but none is a completed run "
                "with per-token (decode) energy, so there is nothing to chart yet.")
    else:
        lead = "No runs are recorded in this database yet."
    body = (
        f"<main><div class=\"empty\" id=\"empty-hint\"><h2>Nothing to show yet</h2>"
        f"<p>{escape(lead)}</p>"
        + (f"<p class=\"small\">{escape(why)}</p>" if why else "")
        + "<p>Record your first run with <code>greenprof measure</code>, for example:</p>"
        f"<pre>greenprof measure smollm-135m --runs 3 --new-tokens 64{escape(db)}</pre>"
        "<p>It measures joules per token (prefill and every generated token), stores the run and its "
        "power timeline, and prints a summary. Then build this report again:</p>"
        f"<pre>greenprof dashboard{escape(db)}</pre>"
        "<p><code>greenprof sensors</code> shows which energy sources this machine can read.</p>"
        "</div></main>\n"
    )
    return (_head("greenprof report: no runs yet") + "<body>\n"
            + _header(where, "no runs to chart") + body + "</body>\n</html>\n")


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _hardware(m: "ModelAggregate") -> str:
    hw = m.hardware or {}
    parts = []
    gpus = [str(g) for g in hw.get("gpus") or []]
    if gpus:
        counts: dict[str, int] = {}
        for g in gpus:
            counts[g] = counts.get(g, 0) + 1
        parts.append(", ".join(f"{n} x {g}" if n > 1 else g for g, n in counts.items()))
    if hw.get("cpu_model"):
        cpu = str(hw["cpu_model"])
        if hw.get("cpu_logical"):
            cpu += f" ({hw['cpu_logical']} threads)"
        parts.append(cpu)
    return "; ".join(parts) if parts else "-"


def _short_source(source: str | None) -> str:
    """'codecarbon 3.3.2 global_energy_mix.json (Our World in Data ...)' -> the part before the
    parenthesis; the whole text is the cell's tooltip."""
    if not source:
        return "-"
    return source.split(" (", 1)[0]


def _card(fig_id: str, title: str, caption: str, has_fig: bool, placeholder: str = "",
          wide: bool = False) -> str:
    inner = (f"<div class=\"chart\" id=\"{fig_id}\"></div>" if has_fig
             else f"<div class=\"placeholder\" id=\"{fig_id}-none\">{escape(placeholder)}</div>")
    return (f"<section class=\"card{' wide' if wide else ''}\"><h2>{escape(title)}</h2>"
            f"<p class=\"caption\">{escape(caption)}</p>{inner}</section>\n")


def _badge(cls: str, text: str, title: str = "") -> str:
    t = f" title=\"{escape(title)}\"" if title else ""
    return f"<span class=\"badge {escape(cls)}\"{t}>{escape(text)}</span>"


def _ids(ids: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _table(models: Sequence["ModelAggregate"], labels: Sequence[str], fallback: "GridIntensity") -> str:
    head = ("model", "params", "precision", "host: hardware", "method", "basis", "runs", "grid intensity",
            "intensity source", "year", "PUE", "J / generated token (95% CI)", "tokens/s",
            "g CO2e / 1k tokens", "$ / M tokens")
    many_hosts = len({m.host for m in models}) > 1  # several hosts in one database: name each
    rows = []
    for m in models:
        iv = m.interval
        ci = (f"{F.fmt(iv.mean)}<br><span class=\"small\" title=\"95% interval of the mean over {iv.n} runs "
              f"({escape(iv.method)})\">[{F.fmt(iv.lo)}, {F.fmt(iv.hi)}]</span>"
              if iv.lo is not None and iv.hi is not None
              else f"{F.fmt(iv.mean)}<br><span class=\"small\">(1 run: no interval)</span>")
        if m.intensity_g_per_kwh is not None:
            grid = f"{escape(m.region or '?')}: {F.fmt(m.intensity_g_per_kwh)}&nbsp;g/kWh"
            if m.regions > 1:
                grid += f"<br><span class=\"small\">(latest run; {m.regions} regions)</span>"
            source, year = m.intensity_source, m.intensity_year
        else:
            grid = (f"{escape(fallback.region)}: {F.fmt(fallback.intensity_g_per_kwh)}&nbsp;g/kWh"
                    "<br><span class=\"small\">(not stored: fallback)</span>")
            source, year = fallback.source, fallback.year
        if m.pue_min is None:
            pue = "-"
        elif m.pue_max is not None and abs(m.pue_max - m.pue_min) > 1e-12:
            pue = f"{m.pue_min:g}-{m.pue_max:g}"
        else:
            pue = f"{m.pue_min:g}"
        runs = f"{m.runs}"
        if m.uncertain_run_ids:
            runs += "<br>" + _badge("uncertain", f"{len(m.uncertain_run_ids)} uncertain",
                                    f"run(s) {_ids(m.uncertain_run_ids)}: a counter may have wrapped unseen; "
                                    "included in the averages")
        if m.partial_run_ids:
            runs += "<br>" + _badge("partial", f"{len(m.partial_run_ids)} partial left out",
                                    f"run(s) {_ids(m.partial_run_ids)} lost a domain mid-run: not averaged")
        fp = escape((m.hardware_fingerprint or "")[:8])
        basis_title = ("what the runs are charged: their share of the counters" if m.basis == "attributed"
                       else "what the counters saw (runs stored before attribution)")
        rows.append(
            f"<tr class=\"model-row\" data-basis=\"{escape(m.basis)}\" data-method=\"{escape(m.method)}\">"
            f"<td class=\"model\">{escape(m.model_name if m.model_name is not None else '(unnamed)')}</td>"
            f"<td class=\"num\">{escape(F.human_params(m.param_count))}</td>"
            f"<td>{escape(m.precision or '-')}"
            + (f" <span class=\"small\">batch {int(m.batch_size)}</span>" if m.batch_size and m.batch_size > 1 else "")
            + "</td>"
            f"<td class=\"hw\">" + (f"<b class=\"host\">{escape(m.host)}</b>: " if m.host and many_hosts else "")
            + escape(_hardware(m)) + (f" <span class=\"small\">#{fp}</span>" if fp else "") + "</td>"
            f"<td class=\"method\">{_badge(m.method, m.method)}</td>"
            f"<td class=\"basis\">{_badge(m.basis, m.basis, basis_title)}</td>"
            f"<td class=\"num runs\">{runs}</td>"
            f"<td class=\"num\">{grid}</td>"
            f"<td class=\"small\" title=\"{escape(source or '')}\">{escape(_short_source(source))}</td>"
            f"<td class=\"num\">{escape(str(year) if year is not None else '-')}</td>"
            f"<td class=\"num\">{escape(pue)}</td>"
            f"<td class=\"num\">{ci}</td>"
            f"<td class=\"num\">{escape(F.fmt(m.tokens_per_s))}</td>"
            f"<td class=\"num\">{escape(F.fmt(m.co2e_g_per_1k_own_grid))}</td>"
            f"<td class=\"num\">{escape(F.fmt(m.usd_per_m_tokens))}</td>"
            "</tr>")
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    return (f"<div class=\"table-wrap\"><table class=\"summary\" id=\"summary\"><thead><tr>{th}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


#: At most this many partial or uncertain runs are listed one by one.
FLAGGED_ROWS = 200


def _flagged_table(rows: Sequence["RunRow"]) -> str:
    """Every partial or uncertain run, one row each, with what happened and whether it is averaged."""
    head = ("run", "model", "precision", "flag", "what happened", "energy", "J / generated token",
            "in the averages")
    out = []
    for r in rows[:FLAGGED_ROWS]:
        flags = ((_badge("partial", "partial") if r.partial else "")
                 + (" " if r.partial and r.uncertain else "")
                 + (_badge("uncertain", "uncertain") if r.uncertain else ""))
        what = "<br>".join(
            [f"{escape(d)} lost: {escape(why)}" for d, why in sorted(r.lost.items())]
            + [f"{escape(d)} uncertain: {escape(why)}" for d, why in sorted(r.uncertain.items())])
        if r.partial:
            used = "no: partial energy (until the loss), left out"
        elif r.charted:
            used = "yes, and its group is marked uncertain"
        else:
            used = "no: no per-token (decode) energy"
        j = F.fmt(r.fig.j_per_token)
        out.append(
            f"<tr class=\"flagged-row{' partial' if r.partial else ''}{' uncertain' if r.uncertain else ''}\" "
            f"data-run-id=\"{r.id}\">"
            f"<td class=\"num\">{r.id}</td>"
            f"<td class=\"model\">{escape(r.run.model_name if r.run.model_name is not None else '(unnamed)')}</td>"
            f"<td>{escape(r.run.precision or '-')}</td>"
            f"<td>{flags}</td>"
            f"<td class=\"small\">{what}</td>"
            f"<td>{escape(r.energy_label)}</td>"
            f"<td class=\"num\">{escape(j)}{' (partial)' if r.partial and j != '-' else ''}</td>"
            f"<td>{escape(used)}</td>"
            "</tr>")
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    more = (f"<p class=\"caption\">{len(rows) - FLAGGED_ROWS} more not listed: "
            "<code>greenprof runs</code> shows every run.</p>" if len(rows) > FLAGGED_ROWS else "")
    return (f"<div class=\"table-wrap\"><table class=\"summary\" id=\"flagged-runs\"><thead><tr>{th}</tr>"
            f"</thead><tbody>{''.join(out)}</tbody></table></div>{more}")


def energy_caption(models: Sequence["ModelAggregate"]) -> str:
    """What the energy of a chart is, group by group: 'Energy: measured energy (attributed) for
    3 groups; estimated energy (attributed) for 2.'"""
    counts: dict[str, int] = {}
    for m in models:
        counts[m.energy_label] = counts.get(m.energy_label, 0) + 1
    if not counts:
        return ""
    parts = [f"{label} for {n} group{'s' if n != 1 else ''}" for label, n in counts.items()]
    return "Energy: " + "; ".join(parts) + " (each bar or point says which)."


def headline(fits: Sequence["SizeFit"]) -> str | None:
    """One sentence: the measured smallest vs largest model of the widest fit, and the scaling
    exponent. None without a fit (fewer than two sizes measured on one machine)."""
    if not fits:
        return None
    f = fits[0]
    s, lg = f.smallest, f.largest
    where = F.short_hardware(lg)
    text = (f"Measured on {where} ({f.precision}, {f.energy_label}): {lg.model_name} "
            f"({F.human_params(lg.param_count)} parameters) takes {f.energy_ratio:.3g}x the energy per "
            f"generated token of {s.model_name} ({F.human_params(s.param_count)}): "
            f"{F.fmt(lg.j_per_token, 3)} vs {F.fmt(s.j_per_token, 3)} J")
    if f.speed_ratio:
        text += (f", and the smaller is {f.speed_ratio:.3g}x as fast" if f.speed_ratio >= 1
                 else f", and the larger is {1 / f.speed_ratio:.3g}x as fast")
    text += f". J/token grows as params^{f.fit.exponent:.2f}"
    if f.fit.exponent_ci95 is not None:
        text += f" [{f.fit.exponent_ci95[0]:.2f}, {f.fit.exponent_ci95[1]:.2f}]"
    return text + f" over {f.fit.points} model sizes."


def full_page(*, where: str, ov: "Overview", grids: Sequence["GridIntensity"], fallback: "GridIntensity",
              timeline: "RunTimeline | None", timeline_note: str | None, notes: Iterable[str],
              plotly_js: str, fits: Sequence["SizeFit"] = (), references: Sequence[dict] = ()) -> str:
    models = ov.models
    labels = F.model_labels(models)
    colours: dict[str, str] = {}
    figs: dict[str, dict] = {}

    def add(fig_id: str, fig: dict | None) -> bool:
        if fig is not None:
            figs[fig_id] = fig
        return fig is not None

    many = len(models) > 8  # per-model bar charts get the full width
    notes = list(notes)
    no_params = [lab for lab, m in zip(labels, models) if not m.param_count]
    if no_params:
        notes.append(f"{len(no_params)} model(s) without a parameter count are left out of the first chart: "
                     + ", ".join(no_params[:5]) + ("..." if len(no_params) > 5 else ""))
    energy = energy_caption(models)
    none = ("No complete run to aggregate: every completed run with per-token energy is partial "
            "(listed below).")
    cards = [
        _card("fig-params", "Energy per generated token vs model size",
              "Mean J per generated token (decode energy / generated tokens, summed over energy domains) per "
              "model, precision and machine; error bars: 95% interval of the mean over runs (log-normal, "
              "never below zero; none for a single run). Filled markers are measured (RAPL, NVML), hollow "
              "circles estimated (CPU time x TDP share), filled diamonds replayed traces, hollow squares a mix; "
              "faded markers are on the gross basis. Lines: J/token = a x params^b fitted per precision and "
              "machine on the models measured (log-log least squares, one point per model), solid over "
              "the measured sizes and dashed beyond, with its 95% prediction band; hollow diamonds with "
              "dashed intervals are seed shapes extrapolated from the fit, not measured. Red shaded "
              "boxes are API models' energy per output token as estimated by EcoLogits (a reference on "
              "other hardware, at the parameter range EcoLogits assumes), never a measurement. "
              + energy,
              add("fig-params", F.energy_vs_params(models, labels, colours, fits, references)),
              "No model has a parameter count (user models without metadata)." if models else none,
              wide=True),
        _card("fig-pareto", "Speed vs energy: the Pareto front",
              "Generated tokens per second against J per generated token. Points on the dotted red line are "
              "Pareto-optimal: no other model is both faster and cheaper in energy. " + energy,
              add("fig-pareto", F.pareto(models, labels, colours)),
              "No run has a decode duration to compute tokens/s from." if models else none),
        _card("fig-co2", "g CO2e per 1k generated tokens, by grid",
              "Stored joules re-costed without re-running: dark bars use each run's own stored grid intensity "
              "and PUE; the others what the same runs would emit on contrasting grids (location-based "
              "intensities from CodeCarbon's data, run's PUE kept). " + energy,
              add("fig-co2", F.co2e_by_grid(models, labels, grids) if models else None), none, wide=True),
        _card("fig-phases", "Energy per request by phase",
              "Energy of one request (mean over runs), split into the prompt pass (prefill) and token "
              "generation (decode), plus setup and teardown where a run has them; the stack is J per "
              "request, all phases. " + energy,
              add("fig-phases", F.prefill_decode(models, labels) if models else None), none, wide=many),
        _card("fig-cost", "Electricity cost per million generated tokens",
              "Energy per generated token (each bar says whether measured or estimated, attributed or gross) "
              "x PUE x each run's electricity price per kWh. The dashed lines are the "
              f"GPT-4o mini API list price (${F.GPT4O_MINI_USD_PER_M['input']:.2f} input, "
              f"${F.GPT4O_MINI_USD_PER_M['output']:.2f} output per million tokens), which also pays for "
              "hardware, staff and margin: a reference, not a like-for-like comparison.",
              add("fig-cost", F.cost(models, labels) if models else None), none, wide=many),
    ]
    if timeline is not None:
        flags = []
        if timeline.status and timeline.status != "completed":
            flags.append(f"{timeline.status}: it covers part of the work")
        if timeline.lost:
            flags.append("partial: " + ", ".join(f"{d} lost" for d in sorted(timeline.lost)))
        if timeline.uncertain:
            flags.append("uncertain: " + ", ".join(sorted(timeline.uncertain)))
        t_title = (f"Power timeline: run {timeline.run_id} "
                   f"({timeline.model_name or '(unnamed)'} · {timeline.precision or '?'})"
                   + (f" [{'; '.join(flags)}]" if flags else ""))
        t_caption = (f"Power per energy domain, {timeline.samples:,} samples averaged into at most 1000 "
                     f"points per domain by the database: {timeline.energy_label}, what each counter saw "
                     "(the whole device, not this run's attributed share). Shaded: prefill and decode; "
                     "dashed red line: end of prefill, start of decode.")
        cards.append(_card("fig-timeline", t_title, t_caption,
                            add("fig-timeline", F.power_timeline(timeline)),
                            f"Run {timeline.run_id} has no power samples.", wide=True))
    else:
        cards.append(_card("fig-timeline", "Power timeline", "", False,
                           timeline_note or "No completed run to draw.", wide=True))
    n_partial = len(ov.partial_runs)
    partial_policy = (f"Partial runs (a domain lost mid-run, so their energy stops at the loss) are left out "
                      f"of every average and chart: {n_partial} left out, listed below." if n_partial else
                      "Partial runs (a domain lost mid-run) would be left out of every average: there are none.")
    table = (f"<section class=\"card wide\"><h2>Summary by model, precision and machine</h2>"
             f"<p class=\"caption\">Runs grouped by (model, precision, batch, hardware fingerprint, basis): "
             f"runs charged their attributed energy and runs stored before attribution (gross only) are "
             f"separate groups, never averaged together. Grid intensity, source and year are the latest run's; "
             f"CO2e and cost are averaged over the runs at their own stored settings. "
             f"{escape(partial_policy)} Runs with an uncertain domain (a counter may have wrapped unseen) "
             f"are averaged and their group is marked.</p>{_table(models, labels, fallback)}</section>\n")
    flagged = ov.flagged
    if flagged:
        table += (f"<section class=\"card wide\" id=\"flagged\"><h2>Partial and uncertain runs</h2>"
                  f"<p class=\"caption\">Completed runs that lost an energy domain mid-run (partial: left out "
                  f"of every average) or whose counter may have wrapped unseen (uncertain: averaged, and "
                  f"marked). <code>greenprof show RUN_ID</code> tells more.</p>{_flagged_table(flagged)}"
                  "</section>\n")
    subtitle = (f"{ov.used_runs} of {ov.total_runs} run{'s' if ov.total_runs != 1 else ''} charted "
                f"({len(models)} model/precision/machine group{'s' if len(models) != 1 else ''})"
                + (f"; {n_partial} partial run{'s' if n_partial != 1 else ''} left out" if n_partial else ""))
    note_html = ("<ul class=\"notes\">" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>\n"
                 if notes else "")
    head = headline(fits)
    if head:
        note_html = f"<p class=\"headline\" id=\"headline\">{escape(head)}</p>\n" + note_html
    return (
        _head("greenprof report") + "<body>\n" + _header(where, subtitle)
        + "<main>\n" + note_html + "<div class=\"grid\">\n" + "".join(cards) + table + "</div>\n"
        + "<footer>Energy figures are the energy charged to each run (attributed: its share of what the "
          "counters saw) unless marked gross (runs stored before attribution, and the power timeline); "
          "idle power is included. Every figure comes from greenprof.accounting, as in "
          "<code>greenprof runs</code>. A figure marked estimated is an order of magnitude, not a "
          "measurement.</footer>\n</main>\n"
        + f"<script>{plotly_js}</script>\n"
        + f"<script type=\"application/json\" id=\"greenprof-figures\">{_json_for_html(figs)}</script>\n"
        + f"<script>{BOOT}</script>\n</body>\n</html>\n"
    )
