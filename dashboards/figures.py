"""Plotly figures of the dashboard, as plain ``{"data": [...], "layout": {...}}`` dicts.

Plain dicts rather than ``plotly.graph_objects``: no validation cost at render time and no template
copied into every figure (the tests validate each dict with ``plotly.graph_objects.Figure``).

Every user string that reaches a figure goes through :func:`ptext` first. plotly.js draws text as
SVG with its own small HTML-like markup (``<b>``, ``<br>``, ``<a href>``...) and decodes a few
entities (``&lt;`` ``&gt;`` ``&amp;`` and numeric ones), so escaping ``& < >`` makes a model named
``<b>x</b>`` or ``<script>...</script>`` show exactly as typed instead of being read as markup.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from greenprof.accounting import energy_label
from greenprof.fmt import human_params

if TYPE_CHECKING:
    from greenprof.carbon import GridIntensity

    from .queries import ModelAggregate, RunTimeline, SizeFit

#: GPT-4o mini API list price, USD per million tokens (OpenAI pricing page, public list price).
GPT4O_MINI_USD_PER_M = {"input": 0.15, "output": 0.60}

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
PRECISION_COLOURS = {"fp32": "#1f77b4", "fp16": "#17becf", "bf16": "#9467bd", "int8": "#ff7f0e",
                     "int4": "#2ca02c"}
#: marker per method: measured points are filled, estimates hollow
METHOD_SYMBOLS = {"measured": "circle", "estimated": "circle-open", "replayed": "diamond",
                  "mixed": "square-open", "none": "x"}
GRID_COLOURS = ("#2ca02c", "#17becf", "#1f77b4", "#9467bd", "#ff7f0e", "#8c564b", "#d62728",
                "#e377c2", "#bcbd22", "#7f7f7f")


def ptext(value: Any) -> str:
    """A user string as plotly.js text that displays literally (see the module docstring)."""
    s = "" if value is None else str(value)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


def precision_colour(precision: str | None, known: dict[str, str]) -> str:
    key = str(precision)
    if key not in known:
        known[key] = PRECISION_COLOURS.get(key) or PALETTE[(len(known) + 3) % len(PALETTE)]
    return known[key]


def model_labels(models: Sequence["ModelAggregate"]) -> list[str]:
    """Unique display labels (plain text): ``model · precision``, plus the host id when the same
    model and precision ran on several hosts (else a short machine name, else the fingerprint)."""
    base = [f"{m.model_name if m.model_name is not None else '(unnamed)'} · {m.precision or '?'}"
            + (f" · batch {m.batch_size}" if m.batch_size and m.batch_size > 1 else "")
            + (" · gross" if m.basis == "gross" else "")
            + (f" · {m.kind}" if m.kind not in (None, "measure") else "")
            for m in models]
    counts: dict[str, int] = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    # the same model measured on other prompt / generation lengths: say which
    workloads: dict[str, set] = {}
    for b, m in zip(base, models):
        workloads.setdefault(b, set()).add(m.workload)
    base = [f"{b} · {m.workload[0]}+{m.workload[1]} tokens" if len(workloads[b]) > 1 and m.workload else b
            for b, m in zip(base, models)]
    # the same model measured and estimated (a RAPL host, and the estimate there): say which
    methods: dict[str, set] = {}
    for b, m in zip(base, models):
        methods.setdefault(b, set()).add(m.method)
    base = [f"{b} · {m.method}" if len(methods[b]) > 1 else b for b, m in zip(base, models)]
    counts = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    hosts = {m.host for m in models}
    out = [f"{b} · {m.host if len(hosts) > 1 and m.host else short_hardware(m)}" if counts[b] > 1 else b
           for b, m in zip(base, models)]
    seen: dict[str, int] = {}
    for lab in out:
        seen[lab] = seen.get(lab, 0) + 1
    out = [f"{lab} #{(m.hardware_fingerprint or '?')[:6]}" if seen[lab] > 1 else lab
           for lab, m in zip(out, models)]
    # a category axis merges equal labels: number any that still collide (contrived names)
    taken: set[str] = set()
    for i, lab in enumerate(out):
        k, cand = 1, lab
        while cand in taken:
            k += 1
            cand = f"{lab} ({k})"
        taken.add(cand)
        out[i] = cand
    return out


def short_hardware(m: "ModelAggregate") -> str:
    """The first GPU's name, else the CPU model, shortened: 'H100 80GB HBM3', 'AMD EPYC 7B13'."""
    hw = m.hardware or {}
    gpus = hw.get("gpus") or []
    name = str(gpus[0]) if gpus else str(hw.get("cpu_model") or "")
    for noise in ("NVIDIA ", "(R)", "(TM)", " CPU", " Processor"):
        name = name.replace(noise, "")
    name = " ".join(name.split())
    if not name:
        return f"hw {(m.hardware_fingerprint or '?')[:6]}"
    return name if len(name) <= 24 else name[:23] + "…"


def _layout(title_x: str, title_y: str, *, log_x: bool = False, log_y: bool = False,
            **extra: Any) -> dict:
    axis = dict(gridcolor="#e6e6e6", zerolinecolor="#cccccc", linecolor="#999999", ticks="outside",
                automargin=True)
    layout = dict(
        font=dict(family=FONT, size=12, color="#222222"),
        paper_bgcolor="#ffffff", plot_bgcolor="#ffffff",
        margin=dict(l=60, r=20, t=20, b=60),
        height=420,
        hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0.0),
        xaxis=dict(axis, title=dict(text=title_x), type="log" if log_x else "-",
                   exponentformat="power" if log_x else "B"),
        yaxis=dict(axis, title=dict(text=title_y), type="log" if log_y else "-",
                   exponentformat="power" if log_y else "B"),
    )
    layout.update(extra)
    return layout


#: Category tick labels longer than this are shortened on the axis (hover shows them whole).
TICK_CHARS = 36


def flags_text(m: "ModelAggregate") -> str:
    """What a group's figures leave out or cannot vouch for: '1 of 3 runs uncertain; 1 partial
    run left out'; empty when nothing."""
    parts = []
    if m.uncertain_run_ids:
        parts.append(f"{len(m.uncertain_run_ids)} of {m.runs} run{'s' if m.runs != 1 else ''} uncertain "
                     "(a counter may have wrapped unseen)")
    if m.partial_run_ids:
        k = len(m.partial_run_ids)
        parts.append(f"{k} partial run{'s' if k != 1 else ''} left out (a domain was lost)")
    return "; ".join(parts)


def tick_tag(m: "ModelAggregate") -> str:
    """The line under a model's name on a bar chart: what its energy is, and whether any of its
    runs is uncertain."""
    return m.energy_label + (" · uncertain" if m.uncertain_run_ids else "")


def _short(label: str) -> str:
    return label if len(label) <= TICK_CHARS else label[:TICK_CHARS - 1] + "…"


def _category_axis(labels: Sequence[str], tags: Sequence[str] | None = None) -> dict:
    """x axis settings for per-model bar charts: every label (shortened when long), with the
    group's energy label in italics on a second line."""
    vals = [ptext(lab) for lab in labels]
    text = [ptext(_short(lab)) + (f"<br><i>{ptext(tags[i])}</i>" if tags else "")
            for i, lab in enumerate(labels)]
    return dict(type="category", tickmode="array", tickvals=vals, ticktext=text, tickangle=-30)


def _category_layout(models: Sequence["ModelAggregate"], labels: Sequence[str], title_y: str,
                     **extra: Any) -> dict:
    tags = [tick_tag(m) for m in models]
    layout = _layout("", title_y, **extra)
    layout["xaxis"].update(_category_axis(labels, tags))
    longest = max((max(min(len(lab), TICK_CHARS), len(tag)) for lab, tag in zip(labels, tags)), default=0)
    layout["height"] = 440 + int(longest * 3.5)  # room for the slanted labels below the bars
    return layout


def _ci_text(m: "ModelAggregate") -> str:
    iv = m.interval
    if iv.lo is not None and iv.hi is not None:
        return f"{fmt(iv.mean)} J [95% interval {fmt(iv.lo)}, {fmt(iv.hi)}]"
    return f"{fmt(iv.mean)} J (1 run: no interval)"


def _hover_extra(m: "ModelAggregate") -> str:
    """Energy label and flags, for hover text (plain text: goes through ptext)."""
    flags = flags_text(m)
    return ptext(m.energy_label + (f"; {flags}" if flags else ""))


def _series(models: Sequence["ModelAggregate"], idx: Sequence[int]) -> dict[tuple[str, str, str], list[int]]:
    """Indices grouped by (precision, method, basis): one legend entry each."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i in idx:
        m = models[i]
        groups.setdefault((m.precision or "?", m.method, m.basis), []).append(i)
    return groups


def series_name(precision: str, method: str, basis: str) -> str:
    """'fp32 · estimated energy (attributed)'."""
    return f"{precision} · {energy_label(method, basis)}"


# -- 1. J per token vs parameters -------------------------------------------------------------------
def size_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Log-axis ticks in human units between ``lo`` and ``hi`` parameters: every power of ten
    ('100M', '1B', '10B'), with 2x and 5x between them when the span is under three decades."""
    lo_dec = math.floor(math.log10(lo)) if lo > 0 else 0
    hi_dec = math.ceil(math.log10(hi)) if hi > 0 else 1
    steps = (1, 2, 5) if hi_dec - lo_dec < 3 else (1,)
    vals = [k * 10.0 ** d for d in range(lo_dec, hi_dec + 1) for k in steps]
    vals = [v for v in vals if lo <= v <= hi] or [10.0 ** lo_dec, 10.0 ** hi_dec]
    return vals, [human_params(int(round(v))) for v in vals]


#: fit line and band colour for a precision's fit (the points keep the precision colour)
FIT_BAND_OPACITY = 0.12


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _log_grid(lo: float, hi: float, n: int = 40) -> list[float]:
    a, b = math.log(lo), math.log(hi)
    return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]


def energy_vs_params(models: Sequence["ModelAggregate"], labels: Sequence[str],
                     colours: dict[str, str], fits: Sequence["SizeFit"] = (),
                     references: Sequence[dict] = ()) -> dict | None:
    """Log-log, one series per precision (colour), method (marker) and basis, 95 % interval bars,
    each point labelled with its model's name; per fit (greenprof.accounting.fit_power_law) its
    line (solid over the measured sizes, dashed beyond) with the 95 % prediction band, the seed
    shapes it extrapolates as hollow diamonds with dashed intervals; API models as shaded
    reference bands (EcoLogits' estimate), never as points. Size ticks in human units."""
    from greenprof.accounting import predict

    idx = [i for i, m in enumerate(models) if m.param_count and m.param_count > 0 and m.j_per_token > 0]
    if not idx:
        return None
    data: list[dict] = []
    xs_all: list[float] = [float(models[i].param_count) for i in idx]
    for fit in fits:
        xs_all.extend(float(r["params"]) for r in fit.extrapolated)
    bands = [r for r in references if r.get("j_per_token_range")]
    for r in bands:
        if r.get("params_range"):
            xs_all.extend(float(v) for v in r["params_range"])
    # room for the point labels on both sides
    x_lo, x_hi = min(xs_all) / 3.0, max(xs_all) * 4.0

    # API reference bands first, so they lie under everything else
    for r in bands:
        lo, hi = r["j_per_token_range"]
        px = r.get("params_range") or [x_lo, x_hi]
        name = f"{r['model']} API: {fmt(lo, 3)}-{fmt(hi, 3)} J/output token, {r.get('estimator', 'estimate')}"
        data.append(dict(
            type="scatter", mode="lines", name=ptext(name), legendgroup="references",
            x=[px[0], px[1], px[1], px[0], px[0]], y=[lo, lo, hi, hi, lo],
            fill="toself", fillcolor="rgba(214,39,40,0.10)", line=dict(color="#d62728", width=1, dash="dot"),
            hoveron="fills+points", text=ptext(r.get("source") or ""),
            hovertemplate=(f"<b>{ptext(r['model'])} API</b> (reference, not measured)<br>"
                           f"{fmt(lo, 3)}-{fmt(hi, 3)} J per output token<br>"
                           + (f"{human_params(int(px[0]))}-{human_params(int(px[1]))} parameters (EcoLogits)"
                              if r.get("params_range") else "parameters not published")
                           + "<extra></extra>"),
        ))
        data.append(dict(type="scatter", mode="text", name=ptext(f"label: {r['model']}"), showlegend=False,
                         x=[px[0]], y=[lo / 1.08], text=[ptext(f"{r['model']} API (estimated by EcoLogits)")],
                         textposition="bottom right", textfont=dict(size=11, color="#d62728"),
                         hoverinfo="skip"))
    for fit in fits:
        colour = precision_colour(fit.precision, colours)
        f = fit.fit
        top = max([fit.largest.param_count] + [r["params"] for r in fit.extrapolated])
        grid = sorted(set(_log_grid(f.params_min, top) + [f.params_max]))
        preds = [predict(f, x) for x in grid]
        tag = f"{fit.precision} fit: J/token ∝ params^{f.exponent:.2f}"
        if f.exponent_ci95 is not None:
            tag += f" [{f.exponent_ci95[0]:.2f}, {f.exponent_ci95[1]:.2f}]"
        tag += f" ({fit.energy_label})"
        if preds[0].j_per_token_ci95 is not None:
            data.append(dict(type="scatter", mode="lines", x=grid, y=[p.j_per_token_ci95[0] for p in preds],
                             line=dict(width=0, color=colour), showlegend=False, hoverinfo="skip",
                             legendgroup=ptext(tag), name=ptext(f"{fit.precision} fit: 95% prediction band, lower")))
            data.append(dict(type="scatter", mode="lines", x=grid, y=[p.j_per_token_ci95[1] for p in preds],
                             line=dict(width=0, color=colour), fill="tonexty",
                             fillcolor=_rgba(colour, FIT_BAND_OPACITY), legendgroup=ptext(tag),
                             name=ptext(f"{fit.precision} fit: 95% prediction band"), hoverinfo="skip"))
        inside = [(x, p.j_per_token) for x, p in zip(grid, preds) if x <= f.params_max * (1 + 1e-9)]
        beyond = [(x, p.j_per_token) for x, p in zip(grid, preds) if x >= f.params_max * (1 - 1e-9)]
        data.append(dict(type="scatter", mode="lines", name=ptext(tag), legendgroup=ptext(tag),
                         x=[x for x, _ in inside], y=[y for _, y in inside],
                         text=[human_params(int(x)) for x, _ in inside], line=dict(color=colour, width=2),
                         hovertemplate="%{text} parameters: %{y:.4g} J/token (fit)<extra></extra>"))
        if len(beyond) > 1:
            data.append(dict(type="scatter", mode="lines", name=ptext(f"{fit.precision} fit, extrapolated"),
                             legendgroup=ptext(tag), showlegend=False,
                             x=[x for x, _ in beyond], y=[y for _, y in beyond],
                             text=[human_params(int(x)) for x, _ in beyond],
                             line=dict(color=colour, width=2, dash="dash"),
                             hovertemplate="%{text} parameters: %{y:.4g} J/token (fit, extrapolated)<extra></extra>"))
        if fit.extrapolated:
            rows = fit.extrapolated
            seg_x: list[Any] = []
            seg_y: list[Any] = []
            for r in rows:
                if r["j_per_token_ci95"]:
                    seg_x += [r["params"], r["params"], None]
                    seg_y += [r["j_per_token_ci95"][0], r["j_per_token_ci95"][1], None]
            if seg_x:
                data.append(dict(type="scatter", mode="lines", x=seg_x, y=seg_y, showlegend=False,
                                 legendgroup=ptext(tag), name=ptext(f"{fit.precision} extrapolated intervals"),
                                 line=dict(color=colour, width=1.5, dash="dash"), hoverinfo="skip"))
            data.append(dict(
                type="scatter", mode="markers+text", legendgroup=ptext(tag),
                name=ptext(f"{fit.precision} · extrapolated from the fit (not measured)"),
                x=[r["params"] for r in rows], y=[r["j_per_token"] for r in rows],
                marker=dict(size=12, symbol="diamond-open", color=colour, line=dict(width=2, color=colour)),
                # alternately below-right and above-left of the rising line, so neighbours do not collide
                text=[ptext(r["model"]) for r in rows],
                textposition=["bottom right" if k % 2 == 0 else "top left" for k in range(len(rows))],
                textfont=dict(size=11, color="#555555"),
                customdata=[[human_params(r["params"]),
                             (f"[95% prediction interval {fmt(r['j_per_token_ci95'][0])}, "
                              f"{fmt(r['j_per_token_ci95'][1])}]" if r["j_per_token_ci95"] else "(no interval)")]
                            for r in rows],
                hovertemplate=("<b>%{text}</b>, extrapolated (not measured)<br>%{customdata[0]} parameters"
                               "<br>%{y:.4g} J/token %{customdata[1]}<extra></extra>"),
            ))
    for (prec, method, basis), members in sorted(_series(models, idx).items()):
        plus, minus = [], []
        for i in members:
            iv = models[i].interval
            plus.append(iv.hi - iv.mean if iv.hi is not None else 0.0)
            minus.append(iv.mean - iv.lo if iv.lo is not None else 0.0)
        colour = precision_colour(prec, colours)
        data.append(dict(
            type="scatter", mode="markers+text",
            name=ptext(series_name(prec, method, basis)), legendgroup=ptext(prec),
            x=[models[i].param_count for i in members],
            y=[models[i].j_per_token for i in members],
            error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus,
                         color=colour, thickness=1.2, width=4),
            marker=dict(size=11, color=colour, symbol=METHOD_SYMBOLS.get(method, "square-open"),
                        opacity=0.55 if basis == "gross" else 1.0, line=dict(width=2, color=colour)),
            text=[ptext(models[i].model_name if models[i].model_name is not None else "(unnamed)")
                  for i in members],
            textposition="top left", textfont=dict(size=11, color="#222222"),
            customdata=[[human_params(models[i].param_count), ptext(_ci_text(models[i])),
                         models[i].runs, _hover_extra(models[i]), ptext(labels[i])] for i in members],
            hovertemplate=("<b>%{customdata[4]}</b><br>%{customdata[0]} parameters<br>%{customdata[1]}"
                           "<br>%{customdata[2]} run(s)<br>%{customdata[3]}<extra></extra>"),
        ))
    layout = _layout("parameters", "J per generated token (decode)", log_x=True, log_y=True, height=520)
    tickvals, ticktext = size_ticks(x_lo, x_hi)
    layout["xaxis"].update(tickmode="array", tickvals=tickvals, ticktext=ticktext,
                           range=[math.log10(x_lo), math.log10(x_hi)])
    layout["yaxis"].update(dtick=1)  # one labelled tick per power of ten
    return dict(data=data, layout=layout)


# -- 2. CO2e per 1k tokens, re-costed per grid ---------------------------------------------------------
def co2e_by_grid(models: Sequence["ModelAggregate"], labels: Sequence[str],
                 grids: Sequence["GridIntensity"]) -> dict:
    x = [ptext(lab) for lab in labels]
    extra = [_hover_extra(m) for m in models]
    data = [dict(
        type="bar", name="each run's own grid (stored)", x=x,
        y=[m.co2e_g_per_1k_own_grid for m in models],
        marker=dict(color="#444444"),
        customdata=[[lab, ptext(_grid_of(m)), e] for lab, m, e in zip(x, models, extra)],
        hovertemplate=("%{customdata[0]}<br>%{y:.4g} g CO2e / 1k tokens<br>%{customdata[1]}"
                       "<br>%{customdata[2]}<extra>stored grid</extra>"),
    )]
    for k, g in enumerate(grids):
        name = f"{g.name} ({g.region}, {g.intensity_g_per_kwh:.4g} g/kWh{f', {g.year}' if g.year else ''})"
        data.append(dict(
            type="bar", name=ptext(name), x=x,
            y=[m.co2e_g_per_1k_at(g.intensity_g_per_kwh) for m in models],
            marker=dict(color=GRID_COLOURS[k % len(GRID_COLOURS)]),
            customdata=[[lab, e] for lab, e in zip(x, extra)],
            hovertemplate=("%{customdata[0]}<br>%{y:.4g} g CO2e / 1k tokens<br>%{customdata[1]}<extra>"
                           + ptext(g.name) + "</extra>"),
        ))
    return dict(data=data, layout=_category_layout(models, labels, "g CO2e per 1k generated tokens",
                                                   log_y=True, barmode="group", bargap=0.15,
                                                   bargroupgap=0.05))


def _grid_of(m: "ModelAggregate") -> str:
    if m.intensity_g_per_kwh is None:
        return "no stored intensity: costed at the fallback grid"
    where = m.region or "?"
    more = f" (+{m.regions - 1} other region(s))" if m.regions > 1 else ""
    return f"{where}: {m.intensity_g_per_kwh:.4g} g/kWh{more}"


# -- 3. Energy per request by phase ---------------------------------------------------------------------
PHASE_STYLE = {  # name, colour
    "setup": ("setup (before the prompt pass)", "#c6dbef"),
    "prefill": ("prefill (prompt)", "#9ecae1"),
    "decode": ("decode (generation)", "#3182bd"),
    "teardown": ("teardown (after the last token)", "#08519c"),
}


def prefill_decode(models: Sequence["ModelAggregate"], labels: Sequence[str]) -> dict:
    """Stacked phases of one request: prefill and decode always, setup and teardown when any
    group has energy there. The stack is J per request, all phases."""
    x = [ptext(lab) for lab in labels]
    extra = [_hover_extra(m) for m in models]
    data = []
    for phase in ("setup", "prefill", "decode", "teardown"):
        ys = [m.phase_j_per_request.get(phase) or 0.0 for m in models]
        if phase in ("setup", "teardown") and not any(ys):
            continue
        name, colour = PHASE_STYLE[phase]
        if phase == "prefill":
            what = [f"for {fmt(m.prompt_tokens, 3)} prompt tokens" for m in models]
        elif phase == "decode":
            what = [f"for {fmt(m.new_tokens, 3)} generated tokens" for m in models]
        else:
            what = [""] * len(models)
        data.append(dict(
            type="bar", name=name, x=x, y=ys, marker=dict(color=colour),
            customdata=[[lab, w, e] for lab, w, e in zip(x, what, extra)],
            hovertemplate=("%{customdata[0]}<br>" + phase + ": %{y:.4g} J %{customdata[1]}"
                           "<br>%{customdata[2]}<extra></extra>"),
        ))
    return dict(data=data, layout=_category_layout(models, labels, "J per request (mean over runs)",
                                                   barmode="stack"))


# -- 4. Power timeline of one run ---------------------------------------------------------------------
PHASE_FILL = {"prefill": "rgba(255,127,14,0.12)", "decode": "rgba(31,119,180,0.07)"}


def power_timeline(tl: "RunTimeline") -> dict | None:
    if not tl.lines:
        return None
    data = []
    for k, (domain, line) in enumerate(sorted(tl.lines.items())):
        colour = PALETTE[k % len(PALETTE)]
        name = f"{domain} · {tl.methods.get(domain) or '?'}"
        if domain in tl.lost:
            name += " · lost (partial)"
        elif domain in tl.uncertain:
            name += " · uncertain"
        data.append(dict(
            type="scatter", mode="lines", name=ptext(name), x=line.t_s, y=line.power_w,
            line=dict(color=colour, width=1.6), connectgaps=False,
            customdata=[[lo, hi, n] for lo, hi, n in zip(line.min_w, line.max_w, line.samples)],
            hovertemplate=("t=%{x:.3f} s<br>%{y:.4g} W (min %{customdata[0]:.4g}, max %{customdata[1]:.4g}, "
                           "%{customdata[2]} samples)<extra>" + ptext(name) + "</extra>"),
        ))
    shapes, annotations = [], []
    ts = [t for line in tl.lines.values() for t in line.t_s]
    if ts and min(ts) < 0:  # the idle baseline window comes before the meter's origin
        shapes.append(dict(type="rect", xref="x", yref="paper", x0=min(ts), x1=0, y0=0, y1=1,
                           fillcolor="rgba(127,127,127,0.10)", line=dict(width=0), layer="below"))
        annotations.append(dict(x=min(ts) / 2, y=1, xref="x", yref="paper", yanchor="bottom",
                                text="idle baseline", showarrow=False, font=dict(size=11, color="#666")))
    boundaries: dict[float, str] = {}
    for kind in ("prefill", "decode"):
        ph = tl.phases.get(kind)
        if ph is None:
            continue
        shapes.append(dict(type="rect", xref="x", yref="paper", x0=ph.start_s, x1=ph.end_s, y0=0, y1=1,
                           fillcolor=PHASE_FILL[kind], line=dict(width=0), layer="below"))
        annotations.append(dict(x=(ph.start_s + ph.end_s) / 2, y=1, xref="x", yref="paper",
                                yanchor="bottom", text=kind, showarrow=False,
                                font=dict(size=11, color="#444")))
        boundaries.setdefault(ph.start_s, f"{kind} starts")
        boundaries[ph.end_s] = f"{kind} ends"
    pre = tl.phases.get("prefill")
    if pre is not None:
        boundaries[pre.end_s] = "prefill ends / decode starts"
    for x, what in sorted(boundaries.items()):
        shapes.append(dict(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1,
                           line=dict(color="#d62728" if "decode starts" in what else "#555555",
                                     width=2 if "decode starts" in what else 1, dash="dash")))
    # the boundaries as an invisible trace too, so hovering a line says what it is
    if boundaries:
        ymax = max((p for line in tl.lines.values() for p in line.max_w if math.isfinite(p)), default=0.0)
        xs = sorted(boundaries)
        data.append(dict(type="scatter", mode="markers", name="phase boundaries", x=xs,
                         y=[ymax] * len(xs), marker=dict(symbol="line-ns-open", size=14, color="#d62728"),
                         text=[boundaries[x] for x in xs],
                         hovertemplate="%{text} at t=%{x:.4f} s<extra></extra>"))
    return dict(data=data, layout=_layout("seconds since the meter started",
                                          f"power (W), {tl.method}, gross",
                                          shapes=shapes, annotations=annotations,
                                          margin=dict(l=60, r=20, t=40, b=60),
                                          legend=dict(orientation="h", yanchor="top", y=-0.18,
                                                      xanchor="left", x=0.0),
                                          hovermode="x unified"))


# -- 5. Speed vs energy, Pareto front ------------------------------------------------------------------
def pareto(models: Sequence["ModelAggregate"], labels: Sequence[str], colours: dict[str, str]) -> dict | None:
    from .queries import pareto_front

    idx = [i for i, m in enumerate(models)
           if m.tokens_per_s and m.tokens_per_s > 0 and m.j_per_token > 0]
    if not idx:
        return None
    data = []
    for (prec, method, basis), members in sorted(_series(models, idx).items()):
        colour = precision_colour(prec, colours)
        data.append(dict(
            type="scatter", mode="markers", name=ptext(series_name(prec, method, basis)),
            legendgroup=ptext(prec),
            x=[models[i].j_per_token for i in members], y=[models[i].tokens_per_s for i in members],
            marker=dict(size=10, color=colour, symbol=METHOD_SYMBOLS.get(method, "square-open"),
                        opacity=0.55 if basis == "gross" else 1.0, line=dict(width=2, color=colour)),
            text=[ptext(labels[i]) for i in members],
            customdata=[[_hover_extra(models[i])] for i in members],
            hovertemplate="<b>%{text}</b><br>%{x:.4g} J/token<br>%{y:.4g} tokens/s<br>%{customdata[0]}<extra></extra>",
        ))
    front = [idx[k] for k in pareto_front([(models[i].j_per_token, models[i].tokens_per_s) for i in idx])]
    data.append(dict(
        type="scatter", mode="lines+markers+text", name="Pareto front",
        x=[models[i].j_per_token for i in front], y=[models[i].tokens_per_s for i in front],
        line=dict(color="#d62728", width=2, dash="dot", shape="hv"),
        marker=dict(size=18, symbol="circle-open", color="#d62728", line=dict(width=2)),
        text=[ptext(labels[i]) for i in front],
        customdata=[[_hover_extra(models[i])] for i in front],
        textposition=["top right" if k % 2 == 0 else "bottom right" for k in range(len(front))],
        textfont=dict(size=10, color="#d62728"),
        hovertemplate=("<b>%{text}</b> (Pareto-optimal)<br>%{x:.4g} J/token<br>%{y:.4g} tokens/s"
                       "<br>%{customdata[0]}<extra></extra>"),
    ))
    return dict(data=data, layout=_layout("J per generated token (lower is better)",
                                          "generated tokens per second (higher is better)",
                                          log_x=True, log_y=True))


# -- 6. Electricity cost per million tokens vs an API price -------------------------------------------
#: bar colour per method; estimated bars are hatched as well
COST_COLOURS = {"measured": "#2ca02c", "estimated": "#98c379", "replayed": "#7f7f7f", "mixed": "#17becf",
                "none": "#bbbbbb"}


def cost(models: Sequence["ModelAggregate"], labels: Sequence[str]) -> dict:
    """One bar series per energy label ("electricity, estimated energy (attributed)"), so the
    legend says what each bar's energy is; a model's bar is in the series of its label only."""
    x = [ptext(lab) for lab in labels]
    kinds: dict[str, tuple[str, str]] = {}  # label -> (method, basis), in order of appearance
    for m in models:
        kinds.setdefault(m.energy_label, (m.method, m.basis))
    data: list[dict] = []
    for label, (method, basis) in kinds.items():
        data.append(dict(
            type="bar", name=ptext(f"electricity, {label}"), x=x,
            y=[m.usd_per_m_tokens if m.energy_label == label else None for m in models],
            marker=dict(color=COST_COLOURS.get(method, "#bbbbbb"), opacity=0.6 if basis == "gross" else 1.0,
                        pattern=dict(shape="/" if method in ("estimated", "mixed") else "")),
            customdata=[[lab, fmt(m.price_usd_per_kwh, 3) if m.price_usd_per_kwh is not None else "default",
                         _hover_extra(m)] for lab, m in zip(x, models)],
            hovertemplate=("%{customdata[0]}<br>$%{y:.3g} per M generated tokens<br>at $%{customdata[1]}/kWh"
                           "<br>%{customdata[2]}<extra></extra>"),
        ))
    annotations = []
    for kind, dash, colour in (("output", "dash", "#d62728"), ("input", "dot", "#ff7f0e")):
        price = GPT4O_MINI_USD_PER_M[kind]
        label = f"GPT-4o mini API, {kind}: ${price:.2f}/M tokens"
        data.append(dict(
            type="scatter", mode="lines", name=label, x=x, y=[price] * len(x),
            line=dict(color=colour, width=2, dash=dash),
            hovertemplate=f"{label} (public list price)<extra></extra>",
        ))
        # the label on the line itself (annotations take log10 values on a log axis)
        annotations.append(dict(xref="paper", x=1, xanchor="right", yref="y", y=math.log10(price),
                                yanchor="bottom" if kind == "output" else "top", showarrow=False,
                                text=label, font=dict(color=colour, size=11),
                                bgcolor="rgba(255,255,255,0.8)"))
    # the same prices as full-width lines (shapes take data values on a log axis)
    shapes = [dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=p, y1=p, layer="below",
                   line=dict(color=c, width=1, dash=d))
              for p, c, d in ((GPT4O_MINI_USD_PER_M["output"], "#d62728", "dash"),
                              (GPT4O_MINI_USD_PER_M["input"], "#ff7f0e", "dot"))]
    return dict(data=data, layout=_category_layout(models, labels, "US dollars per million generated tokens",
                                                   log_y=True, barmode="overlay", shapes=shapes,
                                                   annotations=annotations))
