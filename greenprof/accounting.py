"""Every derived figure, defined once: phases, J per token and per request, CO2e, $, intervals.

`measure`, `track`, `runs`, `show`, `compare`, `export` and the dashboard all take their figures
from here; nothing else divides joules by tokens or converts them to grams or dollars.

Definitions (the names say what they cost):

* **phases**: a run's segments are ``setup`` (before the prompt pass), ``prefill`` (the prompt
  pass), ``decode`` (one segment per generated token, ``token-N``, or one ``decode`` segment
  holding them all, as ``serve`` stores its requests; marks of the user's own between
  the first and the last token count as decode) and ``teardown`` (after the last token). A run
  with no phase marks (a plain ``track`` block) cannot tell them apart: its whole energy is its
  decode phase and ``phases_marked`` is False. The four phases add up to the run's energy.
* **J per prompt token** = prefill energy / prompt tokens (all rows of a batch).
* **J per generated token (decode)** (``j_per_token``) = decode energy / generated tokens.
* **J per request (all phases)** (``j_per_request``) = the run's energy / sequences in it.
* **g CO2e** = J / 3.6e6 x grid intensity (g/kWh) x PUE; **$** = J / 3.6e6 x price ($/kWh) x PUE;
  per 1k generated tokens and per M tokens from J per token, per request from J per request.
* **basis**: ``attributed`` (what this run is charged: its share of the process, the process's
  share of a machine-wide counter) or ``gross`` (what the counters saw; runs stored before
  attribution existed have only that). Per-token figures use ``attributed`` when there is one.
* **95 % interval** of a mean of positive values (J per token over repeated runs): Cox's method
  on the log scale (the values are taken as log-normal), so it never goes below zero; with one
  run there is no interval (None), not a fake one.
* **Scaling with size** (``greenprof ladder``): J per generated token = a x params^b, fitted by
  least squares on (ln params, ln J per token), one point per model; the exponent's 95 % interval
  and the prediction interval of a size not measured use Student's t with n - 2 degrees of freedom.

Pure functions and plain dataclasses; nothing heavy is imported.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from greenprof.errors import UsageError
from greenprof.labels import TOKEN_LABEL
from greenprof.models.errors import AttributionError

J_PER_KWH = 3.6e6
PHASES = ("setup", "prefill", "decode", "teardown")


# --------------------------------------------------------------------------------------------
# Carbon and cost


def co2e_g(energy_j: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """Grams of CO2e for ``energy_j`` joules of IT energy."""
    from greenprof.carbon import check_intensity, check_pue

    return _per_kwh(energy_j, check_intensity(intensity_g_per_kwh), check_pue(pue))


def cost_usd(energy_j: float, price_usd_per_kwh: float, pue: float = 1.0) -> float:
    """US dollars for ``energy_j`` joules of IT energy at ``price_usd_per_kwh`` (energy only)."""
    from greenprof.carbon import check_price, check_pue

    return _per_kwh(energy_j, check_price(price_usd_per_kwh), check_pue(pue))


def _per_kwh(energy_j: float, factor_per_kwh: float, pue: float) -> float:
    """What ``energy_j`` joules of IT energy come to at ``factor_per_kwh`` (g CO2e or USD per
    facility kWh), with the facility's ``pue``: the one formula of co2e_g and cost_usd (their
    factors already checked)."""
    return energy_j / J_PER_KWH * factor_per_kwh * pue


def co2e_g_per_1k_tokens(j_per_token: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """Grams of CO2e per thousand tokens."""
    return co2e_g(j_per_token * 1e3, intensity_g_per_kwh, pue)


def usd_per_m_tokens(j_per_token: float, price_usd_per_kwh: float, pue: float = 1.0) -> float:
    """Electricity cost of one million tokens, in US dollars."""
    return cost_usd(j_per_token * 1e6, price_usd_per_kwh, pue)


# --------------------------------------------------------------------------------------------
# Labels


def collapse_methods(methods: "Mapping[str, str | None] | Iterable[str | None]") -> str:
    """``measured`` / ``estimated`` / ``replayed`` when every domain agrees, else ``mixed``;
    ``none`` when there is no domain."""
    vals = {m for m in (methods.values() if isinstance(methods, Mapping) else methods) if m}
    if not vals:
        return "none"
    return vals.pop() if len(vals) == 1 else "mixed"


def energy_label(method: str, basis: str) -> str:
    """What a chart or a column of energy figures is: "estimated energy (attributed)"."""
    word = {"measured": "measured", "estimated": "estimated", "replayed": "replayed",
            "mixed": "measured and estimated"}.get(method, method)
    return f"{word} energy ({basis})"


# --------------------------------------------------------------------------------------------
# Phases


def generated_tokens(segments: Iterable[Any]) -> int:
    """Tokens a measurement's segments generated: one per ``token-N`` segment, plus what the
    merged ``decode`` segments say they hold (``Segment.tokens``)."""
    n = 0
    for s in segments:
        k = getattr(s, "tokens", None)
        if k is not None and s.label == "decode":
            n += k
        elif TOKEN_LABEL.match(s.label):
            n += 1
    return n


def segment_phases(labels: Sequence[str]) -> list[str]:
    """Each segment's kind by label and position: ``prefill``, ``decode`` (``token-N``, or
    ``decode`` for tokens stored merged),
    ``setup`` (before the first of those), ``teardown`` (after the last), else ``other``
    (between them, or every segment of a run without phase marks)."""
    kinds = ["prefill" if lb == "prefill" else "decode" if lb == "decode" or TOKEN_LABEL.match(lb) else "other"
             for lb in labels]
    phased = [i for i, k in enumerate(kinds) if k != "other"]
    if not phased:
        return kinds
    first, last = phased[0], phased[-1]
    return ["setup" if k == "other" and i < first else "teardown" if k == "other" and i > last else k
            for i, k in enumerate(kinds)]


def phase_energy(by_kind: Mapping[str, float | None]) -> tuple[dict[str, float], bool]:
    """The four phases from energy per segment kind (setup, prefill, decode, teardown, other).

    ``other`` between phase marks counts as decode; a run with only ``other`` (no phase marks)
    is all decode. Returns (phases, phases_marked)."""
    e = {k: float(v) for k, v in by_kind.items() if v is not None}
    marked = any(k in e for k in ("prefill", "decode"))
    out = {p: e.get(p, 0.0) for p in PHASES}
    out["decode"] += e.get("other", 0.0)
    return out, marked


# --------------------------------------------------------------------------------------------
# One run's figures


@dataclass
class RunFigures:
    """Every derived figure of one run, on one basis. ``None`` where it cannot be defined."""

    basis: str  # "attributed" | "gross"
    energy_j: float | None  # the run's energy, all phases
    phase_energy_j: dict[str, float]
    phases_marked: bool
    prompt_tokens: int | None  # all rows of the run
    generated_tokens: int | None
    requests: int
    j_per_prompt_token: float | None
    j_per_token: float | None  # per generated token (decode)
    j_per_request: float | None  # per request (all phases)
    co2e_g: float | None
    co2e_g_per_1k_tokens: float | None
    co2e_g_per_request: float | None
    cost_usd: float | None
    usd_per_m_tokens: float | None
    usd_per_m_prompt_tokens: float | None
    usd_per_request: float | None

    def to_dict(self) -> dict[str, Any]:
        return clean_json(dict(self.__dict__))


def div_or_none(a: float | None, b: float | int | None) -> float | None:
    """a / b, or None when either is unknown or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def run_figures(phase_energy_j: Mapping[str, float] | None, *, basis: str, phases_marked: bool = True,
                prompt_tokens: int | None = None, generated_tokens: int | None = None, requests: int = 1,
                intensity_g_per_kwh: float | None = None, pue: float = 1.0,
                price_usd_per_kwh: float | None = None, energy_j: float | None = None) -> RunFigures:
    """Figures of one run from its phase energies (on ``basis``) and token counts.

    A run that is no inference (``greenprof serve``'s idle periods) has no phases: pass
    ``phase_energy_j=None`` with its ``energy_j``, and ``requests=0`` (no per-request figures)."""
    if phase_energy_j is None:
        phases: dict[str, float] = {}
        total = energy_j
    else:
        phases = {p: float(phase_energy_j.get(p, 0.0)) for p in PHASES}
        total = math.fsum(phases.values())
    requests = max(0, int(requests if requests is not None else 1))
    j_tok = div_or_none(phases.get("decode") if phases else None, generated_tokens)
    j_prompt = div_or_none(phases.get("prefill") if phases and phases_marked else None, prompt_tokens)
    j_req = div_or_none(total, requests)
    # the factors a figure is computed with are checked once here (no energy: none is), then
    # each figure is co2e_g's / cost_usd's formula
    g, price = intensity_g_per_kwh, price_usd_per_kwh
    if total is not None and (g is not None or price is not None):
        from greenprof.carbon import check_intensity, check_price, check_pue

        g = check_intensity(g) if g is not None else None
        price = check_price(price) if price is not None else None
        pue = check_pue(pue)

    def c(j: float | None) -> float | None:
        return _per_kwh(j, g, pue) if j is not None and g is not None else None

    def usd(j: float | None) -> float | None:
        return _per_kwh(j, price, pue) if j is not None and price is not None else None

    return RunFigures(
        basis=basis, energy_j=total, phase_energy_j=phases, phases_marked=phases_marked,
        prompt_tokens=prompt_tokens, generated_tokens=generated_tokens, requests=requests,
        j_per_prompt_token=j_prompt, j_per_token=j_tok, j_per_request=j_req,
        co2e_g=c(total), co2e_g_per_1k_tokens=c(j_tok * 1e3) if j_tok is not None else None,
        co2e_g_per_request=c(j_req),
        cost_usd=usd(total), usd_per_m_tokens=usd(j_tok * 1e6) if j_tok is not None else None,
        usd_per_m_prompt_tokens=usd(j_prompt * 1e6) if j_prompt is not None else None,
        usd_per_request=usd(j_req),
    )


def measurement_phases(m: Any, basis: str = "attributed") -> tuple[dict[str, float], bool]:
    """Phase energies (summed over domains) of a Meter measurement, on ``basis``."""
    kinds = segment_phases([s.label for s in m.segments])
    by_kind: dict[str, float] = {}
    for kind, s in zip(kinds, m.segments):
        e = s.attributed_energy_j if basis == "attributed" and getattr(s, "attributed_energy_j", None) \
            else s.energy_j
        by_kind[kind] = by_kind.get(kind, 0.0) + math.fsum(e.values())
    return phase_energy(by_kind)


def measurement_basis(m: Any) -> str:
    return "attributed" if getattr(m, "attributed_energy_j", None) else "gross"


def record_basis(run: Any) -> str:
    """``attributed`` when every domain of a stored run has its attributed energy, ``gross``
    when one lacks it (runs stored before attribution existed), ``none`` when the run has no
    energy at all (a request interrupted before it started, a run that failed before its window
    opened): nothing was charged, on no basis, as its method is ``none``."""
    doms = [d for d in run.domains.values() if d.energy_j is not None]
    if not doms:
        return "none"
    if all(getattr(d, "attributed_energy_j", None) is not None for d in doms):
        return "attributed"
    return "gross"


def is_idle_record(run: Any) -> bool:
    """A stored run that is ``greenprof serve``'s energy between requests (model "(idle)")."""
    serve = (getattr(run, "extra", None) or {}).get("serve")
    return isinstance(serve, dict) and serve.get("idle") is True


def record_figures(run: Any, *, intensity_g_per_kwh: float | None, pue: float,
                   price_usd_per_kwh: float | None, basis: str | None = None) -> RunFigures:
    """Figures of a stored run (a ``greenprof.store.RunRecord``) from its stored joules."""
    basis = basis or record_basis(run)
    by_kind: dict[str, float | None] = {}
    tokens: dict[str, int | None] = {}
    for kind, ph in run.phases.items():
        src = ph.attributed_energy_j if basis == "attributed" else ph.energy_j
        vals = [v for v in src.values() if v is not None]
        by_kind[kind] = math.fsum(vals) if vals else (0.0 if src else None)
        tokens[kind] = ph.tokens
    if is_idle_record(run):  # a server's idle period: its energy, and no phase, token or request
        return run_figures(None, basis=basis, phases_marked=False, requests=0,
                           energy_j=fsum_or_none(by_kind.values()), intensity_g_per_kwh=intensity_g_per_kwh,
                           pue=pue, price_usd_per_kwh=price_usd_per_kwh)
    if not by_kind:
        phases, marked = None, False
    else:
        phases, marked = phase_energy(by_kind)
    batch = run.batch_size or 1
    if marked:
        prompt = tokens.get("prefill")
        if prompt is None and "prefill" in run.phases and run.prompt_tokens is not None:
            prompt = run.prompt_tokens * batch
        generated = tokens.get("decode")
        if generated is None and "decode" in run.phases and run.new_tokens is not None:
            generated = run.new_tokens * batch
    else:
        prompt = run.prompt_tokens * batch if run.prompt_tokens is not None else None
        generated = run.new_tokens * batch if run.new_tokens else None
    return run_figures(phases, basis=basis, phases_marked=marked, prompt_tokens=prompt,
                       generated_tokens=generated, requests=batch,
                       intensity_g_per_kwh=intensity_g_per_kwh, pue=pue,
                       price_usd_per_kwh=price_usd_per_kwh)


# --------------------------------------------------------------------------------------------
# A stored run's summary: what `runs`, `show`, `export`, `compare` print


def fsum_or_none(values: Iterable[float | None]) -> float | None:
    """The exact sum of the known values, or None when none is known."""
    vals = [v for v in values if v is not None]
    return math.fsum(vals) if vals else None


class Grid:
    """The intensity used to cost one run, and where it came from."""

    __slots__ = ("region", "g_per_kwh", "source", "year", "what_if")

    def __init__(self, region: str | None, g_per_kwh: float | None, source: str | None, year: int | None,
                 what_if: bool) -> None:
        self.region, self.g_per_kwh, self.source, self.year, self.what_if = \
            region, g_per_kwh, source, year, what_if


def run_grid(run: Any, regions: dict[str, Grid | None] | None = None) -> Grid | None:
    """The intensity a run's own record costs it at: the stored intensity, else its region's
    (CodeCarbon's data); None when it has neither. ``regions`` caches region lookups."""
    if run.intensity_g_per_kwh is not None:
        return Grid(run.region, run.intensity_g_per_kwh, run.intensity_source, run.intensity_year, False)
    if not run.region:
        return None
    if regions is not None and run.region in regions:
        return regions[run.region]
    from greenprof import carbon

    try:
        g = carbon.lookup(run.region)
        grid: Grid | None = Grid(g.region, g.intensity_g_per_kwh, g.source, g.year, False)
    except carbon.UnknownRegion:
        grid = None
    if regions is not None:
        regions[run.region] = grid
    return grid


class Costing:
    """Resolves, per run, the grid intensity and price to cost it with."""

    def __init__(self, settings: Any, what_if: Any = None) -> None:
        self.settings = settings
        self.what_if = what_if
        self._fallback: Grid | None = None
        self._unpriced: list[int] = []
        self.notes: list[str] = []

    def _say(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)

    def fallback(self) -> Grid:
        if self._fallback is None:
            from greenprof.config import resolve_intensity

            g, _ = resolve_intensity(self.settings)
            self._fallback = Grid(g.region, g.intensity_g_per_kwh, g.source, g.year, False)
        return self._fallback

    def grid(self, run: Any, needed: bool = True) -> Grid:
        """``needed=False`` (a run with no energy): no fallback, no note; the stored values as is."""
        if self.what_if is not None:
            w = self.what_if
            return Grid(w.region, w.intensity_g_per_kwh, w.source, w.year, True)
        own = run_grid(run)
        if own is not None:
            return own
        if not needed:
            return Grid(run.region, None, run.intensity_source, run.intensity_year, False)
        self._unpriced.append(run.id)
        return self.fallback()

    def price(self, run: Any) -> float:
        if run.price_usd_per_kwh is not None:
            return float(run.price_usd_per_kwh)
        return float(self.settings.price_usd_per_kwh)

    def take_notes(self) -> list[str]:
        """What costing had to say since the last call (printed by the commands)."""
        if self._unpriced:
            ids, fb = sorted(set(self._unpriced)), self.fallback()
            self._say(f"run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} "
                      f"{'have' if len(ids) > 1 else 'has'} no stored grid intensity: costed at "
                      f"{fb.region} ({fb.g_per_kwh:g} g/kWh) from the current settings "
                      "(--region R re-costs every run; GREENPROF_REGION / [tool.greenprof] region "
                      "set the default)")
            self._unpriced.clear()
        notes, self.notes = self.notes, []
        return notes


def run_summary(run: Any, costing: "Costing") -> dict[str, Any]:
    """Everything `runs`, `show`, `export` and `compare` print about a run, from stored joules.

    Every derived figure comes from greenprof.record_figures. Vocabulary (the same in
    measure --json and track): ``energy_j`` is the energy charged to the run (a number, on
    ``basis``), ``gross_energy_j`` what the counters saw; ``*_by_domain`` the same per domain.
    """
    gross = {d: r.energy_j for d, r in run.domains.items() if r.energy_j is not None}
    basis = record_basis(run)
    charged = ({d: r.attributed_energy_j for d, r in run.domains.items() if r.attributed_energy_j is not None}
               if basis == "attributed" else dict(gross))
    lost = {d: r.lost_reason for d, r in run.domains.items() if r.lost_reason}
    uncertain = {d: r.uncertain_reason for d, r in run.domains.items() if r.uncertain_reason}
    # None without an idle baseline (the store reads it so)
    dynamic = fsum_or_none(r.dynamic_energy_j for r in run.domains.values() if r.energy_j is not None)
    dec = run.phases.get("decode")
    grid = costing.grid(run, needed=bool(gross))
    pue = float(run.pue) if run.pue is not None else 1.0
    price = costing.price(run)
    fig = record_figures(run, intensity_g_per_kwh=grid.g_per_kwh, pue=pue,
                                    price_usd_per_kwh=price, basis=basis)
    has_energy = bool(gross)
    ph = fig.phase_energy_j if has_energy else {}
    decode_dyn = fsum_or_none(dec.dynamic_energy_j.values()) if dec else None
    methods = {d: r.method for d, r in run.domains.items()}
    session = (run.extra or {}).get("session") or {}
    decode_s = dec.duration_s if dec else (run.duration_s if not fig.phases_marked else None)
    return {
        "id": run.id,
        "batch_id": run.batch_id,
        # the run this one ran inside (its energy is part of that run's): sum only runs without one
        "parent_run_id": run.parent_run_id,
        "kind": run.kind,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "host": run.host,
        "model": run.model_name,
        "model_shape": run.model_shape,
        "params": run.param_count,
        "precision": run.precision,
        "model_file_hash": run.model_file_hash,
        "provider": run.provider,
        "threads": run.threads,
        "spinning": session.get("spinning"),
        "graph_opt": session.get("graph_opt"),
        "warmup": session.get("warmup"),
        "prompt_tokens": run.prompt_tokens,
        "new_tokens": run.new_tokens,  # generated (an interrupted run: the tokens it reached)
        "requested_new_tokens": (run.extra or {}).get("requested_new_tokens", run.new_tokens),
        "batch_size": run.batch_size,
        "collectors": run.collectors,
        "domains": sorted(run.domains),
        "method": collapse_methods(methods.values()),
        "methods": methods,
        "basis": basis,
        "duration_s": run.duration_s,
        "energy_j": fig.energy_j if has_energy else None,
        "gross_energy_j": fsum_or_none(gross.values()),
        "energy_j_by_domain": charged,
        "gross_energy_j_by_domain": gross,
        "share": {d: r.share for d, r in run.domains.items() if r.share is not None},
        "share_notes": {d: r.share_note for d, r in run.domains.items() if r.share_note},
        "dynamic_energy_j": dynamic,
        "phase_energy_j": ph,
        "phases_marked": fig.phases_marked,
        "setup_energy_j": ph.get("setup"),
        "prefill_energy_j": ph.get("prefill") if fig.phases_marked else None,
        "decode_energy_j": ph.get("decode"),
        "teardown_energy_j": ph.get("teardown"),
        "prefill_tokens": fig.prompt_tokens,
        "decode_tokens": fig.generated_tokens,
        "j_per_prompt_token": fig.j_per_prompt_token,
        "j_per_token": fig.j_per_token,
        "j_per_request": fig.j_per_request if has_energy else None,
        "dynamic_j_per_token": div_or_none(decode_dyn, fig.generated_tokens) if fig.phases_marked else None,
        "tokens_per_s": div_or_none(fig.generated_tokens, decode_s),
        "partial": bool(lost),
        "lost": lost,
        "lost_domains": sorted(lost),
        "uncertain": uncertain,
        "uncertain_domains": sorted(uncertain),
        "other_cpu_share": run.other_cpu_share,
        "region": grid.region,
        "intensity_g_per_kwh": grid.g_per_kwh,
        "intensity_source": grid.source,
        "intensity_year": grid.year,
        "what_if": grid.what_if,
        "run_region": run.region,
        "run_intensity_g_per_kwh": run.intensity_g_per_kwh,
        "pue": pue,
        "co2e_g": fig.co2e_g if has_energy else None,
        "co2e_g_per_1k_tokens": fig.co2e_g_per_1k_tokens,
        "co2e_g_per_request": fig.co2e_g_per_request if has_energy else None,
        "price_usd_per_kwh": price,
        "cost_usd": fig.cost_usd if has_energy else None,
        "usd_per_m_tokens": fig.usd_per_m_tokens,
        "usd_per_request": fig.usd_per_request if has_energy else None,
        "error": run.error,
    }


# --------------------------------------------------------------------------------------------
# Per-token attribution of one generation


@dataclass
class Attribution:
    """Energy of one generation split into phases, per token and per domain (on ``basis``).

    Token counts are per sequence; with ``batch`` rows each per-token figure is divided by
    ``tokens * batch``. ``*_dynamic_*`` figures are gross above the idle baseline and are empty
    when the measurement has no baseline.
    """

    prompt_tokens: int
    new_tokens: int
    batch: int
    basis: str
    prefill_duration_s: float
    decode_duration_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    phase_energy_j: dict[str, float]  # setup, prefill, decode, teardown: summed over domains
    prefill_energy_j: dict[str, float]
    decode_energy_j: dict[str, float]
    prefill_j_per_prompt_token: dict[str, float]
    decode_j_per_token: dict[str, float]
    prefill_dynamic_j_per_prompt_token: dict[str, float]
    decode_dynamic_j_per_token: dict[str, float]
    #: J of every decode token per domain (index 0 = token-1); for a domain in
    #: ``window_averaged`` every entry is the decode window divided by the token count.
    per_token_j: dict[str, list[float]]
    #: domains whose counter resolution is coarser than a token: per-token figures are averages.
    window_averaged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def j_per_token(self) -> float:
        """J per generated token (decode), summed over domains."""
        return math.fsum(self.decode_j_per_token.values())

    @property
    def j_per_prompt_token(self) -> float:
        return math.fsum(self.prefill_j_per_prompt_token.values())


def _domain_map(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    raise AttributionError(f"segment energy {value!r} is not a {{domain: joules}} mapping")


def attribute(measurement: Any, prompt_tokens: int, new_tokens: int, *, batch: int = 1,
              resolution_s: Mapping[str, float | None] | None = None,
              basis: str | None = None) -> Attribution:
    """Per-token energy from a measurement whose segments are labelled "prefill", "token-1"...

    ``basis``: "attributed" (default when the measurement has attributed energy) or "gross".
    ``resolution_s`` maps a domain to how often its counter updates (by default the
    measurement's own). A domain whose resolution is longer than the median token duration
    cannot resolve single tokens: its per-token figures are the decode window divided by the
    number of tokens, and the result says so in ``window_averaged`` and ``notes``.
    """
    for name, value in (("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AttributionError(f"{name}={value!r}: give a positive token count")
    segments = list(getattr(measurement, "segments", ()) or ())
    if basis is None:
        basis = "attributed" if all(getattr(s, "attributed_energy_j", None) for s in segments) and segments \
            else "gross"

    def energy(seg: Any) -> dict[str, float]:
        return _domain_map(seg.attributed_energy_j if basis == "attributed" else seg.energy_j)

    prefill = [s for s in segments if s.label == "prefill"]
    decode: dict[int, Any] = {}
    for seg in segments:
        m = TOKEN_LABEL.match(seg.label)
        if m:
            decode[int(m.group(1))] = seg
    if len(prefill) != 1:
        raise AttributionError(
            f"the measurement has {len(prefill)} 'prefill' segments: attribution needs exactly one "
            "(call meter.mark('prefill') after the prompt pass, as generate() does)")
    if sorted(decode) != list(range(1, new_tokens + 1)):
        raise AttributionError(
            f"the measurement has {len(decode)} token-i segments but new_tokens={new_tokens}: "
            "attribution needs one 'token-i' segment per generated token, i = 1..new_tokens")
    tokens = [decode[i] for i in range(1, new_tokens + 1)]
    pre = prefill[0]

    kinds = segment_phases([s.label for s in segments])
    by_kind: dict[str, float] = {}
    for kind, s in zip(kinds, segments):
        by_kind[kind] = by_kind.get(kind, 0.0) + math.fsum(energy(s).values())
    phases, _ = phase_energy(by_kind)

    prefill_j = energy(pre)
    prefill_dyn = _domain_map(getattr(pre, "dynamic_energy_j", None))
    doms: dict[str, None] = {}
    for s in tokens:
        for d in energy(s):
            doms.setdefault(d)
    per_token = {d: [energy(s).get(d, 0.0) for s in tokens] for d in doms}
    decode_j = {d: math.fsum(v) for d, v in per_token.items()}
    decode_dyn: dict[str, float] = {}
    dyn_maps = [_domain_map(getattr(s, "dynamic_energy_j", None)) for s in tokens]
    if all(dyn_maps) and getattr(measurement, "idle_power_w", None) != {}:
        for d in decode_j:
            decode_dyn[d] = math.fsum(mp.get(d, 0.0) for mp in dyn_maps)

    prefill_s = float(pre.duration_s)
    durations = [float(s.duration_s) for s in tokens]
    decode_s = math.fsum(durations)
    median_token_s = statistics.median(durations)
    n_prompt = prompt_tokens * batch
    n_new = new_tokens * batch
    window_averaged: list[str] = []
    notes: list[str] = []
    if resolution_s is None:
        resolution_s = getattr(measurement, "resolution_s", None)
    for domain, res in sorted((resolution_s or {}).items()):
        if res is not None and res > median_token_s and domain in per_token:
            window_averaged.append(domain)
            per_token[domain] = [decode_j[domain] / new_tokens] * new_tokens
            notes.append(
                f"{domain}: counter resolution {res:.3g} s > median token duration "
                f"{median_token_s:.3g} s, so per-token figures are the decode window "
                f"({decode_s:.3g} s) divided by {new_tokens} tokens")
            if res > prefill_s and domain in prefill_j:
                notes.append(
                    f"{domain}: the prefill ({prefill_s:.3g} s) is shorter than the counter "
                    "resolution; its prefill energy is uncertain by up to one counter update")

    return Attribution(
        prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch, basis=basis,
        prefill_duration_s=prefill_s, decode_duration_s=decode_s,
        prefill_tokens_per_s=n_prompt / prefill_s if prefill_s > 0 else math.nan,
        decode_tokens_per_s=n_new / decode_s if decode_s > 0 else math.nan,
        phase_energy_j=phases,
        prefill_energy_j=prefill_j, decode_energy_j=decode_j,
        prefill_j_per_prompt_token={d: j / n_prompt for d, j in prefill_j.items()},
        decode_j_per_token={d: j / n_new for d, j in decode_j.items()},
        prefill_dynamic_j_per_prompt_token={d: j / n_prompt for d, j in prefill_dyn.items()},
        decode_dynamic_j_per_token={d: j / n_new for d, j in decode_dyn.items()},
        per_token_j={d: [j / batch for j in v] for d, v in per_token.items()},
        window_averaged=window_averaged, notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float | None  # None with fewer than two values
    hi: float | None
    n: int
    method: str  # "lognormal-cox" | "student-t" | "n/a"

    def as_list(self) -> list[float] | None:
        return [self.lo, self.hi] if self.lo is not None and self.hi is not None else None


def interval95(values: Sequence[float]) -> Interval:
    """Mean and two-sided 95 % confidence interval of the mean.

    Positive values (energies, J per token): Cox's method for the mean of a log-normal sample,
    exp(ybar + s^2/2 +- t * sqrt(s^2/n + s^4 / (2 (n - 1)))) with y = ln x, Student's t instead of
    the normal quantile for small samples: it never goes below zero. Values that can be zero or
    negative (dynamic energy): the Student-t interval. One value: no interval.
    """
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not data:
        raise UsageError("interval95() needs at least one finite value")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return Interval(mean, None, None, 1, "n/a")
    t = t_quantile(0.975, n - 1)
    if all(v > 0 for v in data):
        ys = [math.log(v) for v in data]
        ybar = math.fsum(ys) / n
        s2 = statistics.variance(ys)
        half = t * math.sqrt(s2 / n + s2 * s2 / (2 * (n - 1)))
        centre = ybar + s2 / 2
        return Interval(mean, math.exp(centre - half), math.exp(centre + half), n, "lognormal-cox")
    half = t * statistics.stdev(data) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "student-t")


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom.

    Exact to ~1e-12: the CDF is the regularized incomplete beta function (continued fraction,
    Lentz's method), inverted by Newton steps safeguarded with bisection. No scipy needed.
    """
    if not 0.0 < p < 1.0:
        raise UsageError(f"p={p!r}: a quantile needs 0 < p < 1")
    if not df > 0:
        raise UsageError(f"df={df!r}: degrees of freedom must be > 0")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    t = 0.5 * (lo + hi)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    for _ in range(200):
        f = _t_cdf(t, df) - p
        if f > 0:
            hi = t
        else:
            lo = t
        pdf = math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))
        step = t - f / pdf if pdf > 0 else math.nan
        t_new = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(t_new - t) <= 1e-14 * max(1.0, abs(t)):
            return t_new
        t = t_new
    return t


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for t >= 0: 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2)."""
    x = df / (df + t * t)
    return 1.0 - 0.5 * _betainc(df / 2.0, 0.5, x)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


# --------------------------------------------------------------------------------------------
# Scaling with model size: J per generated token = a x params^b


@dataclass(frozen=True)
class PowerLawFit:
    """``j_per_token = a x params^b``, fitted by ordinary least squares on the log-log points
    (ln J per token against ln params).

    ``exponent_ci95`` is the 95 % confidence interval of ``b`` (Student's t with ``points - 2``
    degrees of freedom); None with two points, where the line goes through both and nothing is
    left to estimate its error from. ``residual_sd`` is the standard deviation of the points
    around the line on the log scale (None with two points).
    """

    exponent: float  # b
    log_coefficient: float  # ln a (a in J per token at one parameter)
    points: int
    exponent_ci95: tuple[float, float] | None
    residual_sd: float | None
    r2: float | None  # share of the log-scale variance the line explains; None with two points
    log_params_mean: float
    log_params_sxx: float  # sum of squared deviations of ln params from their mean
    params_min: float
    params_max: float

    @property
    def coefficient(self) -> float:
        """a, in J per generated token at one parameter."""
        return math.exp(self.log_coefficient)

    @property
    def df(self) -> int:
        return self.points - 2

    def exponent_ci95_list(self) -> list[float] | None:
        return list(self.exponent_ci95) if self.exponent_ci95 is not None else None

    def to_dict(self) -> dict[str, Any]:
        return clean_json({
            "exponent": self.exponent, "exponent_ci95": self.exponent_ci95_list(),
            "coefficient_j_per_token": self.coefficient, "points": self.points,
            "residual_sd_log": self.residual_sd, "r2": self.r2,
            "params_range": [self.params_min, self.params_max],
        })


def fit_power_law(params: Sequence[float], j_per_token: Sequence[float]) -> PowerLawFit:
    """Fit ``j_per_token = a x params^b`` by least squares on (ln params, ln J per token).

    Each pair is one point (the ladder passes one per model: its mean J per generated token over
    its runs, so repeated runs do not count as extra models). Needs positive, finite values and at
    least two distinct sizes; the exponent's interval needs at least three points.
    """
    xs_raw = [float(p) for p in params]
    ys_raw = [float(j) for j in j_per_token]
    if len(xs_raw) != len(ys_raw):
        raise UsageError(f"fit_power_law(): {len(xs_raw)} sizes but {len(ys_raw)} J per token values")
    for name, vals in (("params", xs_raw), ("j_per_token", ys_raw)):
        bad = [v for v in vals if not (math.isfinite(v) and v > 0)]
        if bad:
            raise UsageError(f"fit_power_law(): {name} must be positive and finite (got {bad[0]!r})")
    if len(set(xs_raw)) < 2:
        raise UsageError("fit_power_law() needs models of at least two different sizes")
    xs = [math.log(v) for v in xs_raw]
    ys = [math.log(v) for v in ys_raw]
    n = len(xs)
    xbar = math.fsum(xs) / n
    ybar = math.fsum(ys) / n
    sxx = math.fsum((x - xbar) ** 2 for x in xs)
    sxy = math.fsum((x - xbar) * (y - ybar) for x, y in zip(xs, ys))
    b = sxy / sxx
    ln_a = ybar - b * xbar
    ci = sd = r2 = None
    if n > 2:
        sse = math.fsum((y - (ln_a + b * x)) ** 2 for x, y in zip(xs, ys))
        sst = math.fsum((y - ybar) ** 2 for y in ys)
        sd = math.sqrt(sse / (n - 2))
        half = t_quantile(0.975, n - 2) * sd / math.sqrt(sxx)
        ci = (b - half, b + half)
        r2 = 1.0 - sse / sst if sst > 0 else 1.0
    return PowerLawFit(exponent=b, log_coefficient=ln_a, points=n, exponent_ci95=ci, residual_sd=sd,
                       r2=r2, log_params_mean=xbar, log_params_sxx=sxx, params_min=min(xs_raw),
                       params_max=max(xs_raw))


@dataclass(frozen=True)
class PowerLawPrediction:
    """J per generated token the fit predicts for a model of ``params`` parameters, with the 95 %
    prediction interval of one new model of that size (None when the fit has two points).
    ``extrapolated``: the size lies outside the sizes the fit was made on."""

    params: float
    j_per_token: float
    j_per_token_ci95: tuple[float, float] | None
    extrapolated: bool

    def ci95_list(self) -> list[float] | None:
        return list(self.j_per_token_ci95) if self.j_per_token_ci95 is not None else None


def predict(fit: PowerLawFit, params: float) -> PowerLawPrediction:
    """The fit at ``params``: exp(ln a + b ln params), and exp of the t prediction interval on the
    log scale, ``t(0.975, n-2) x s x sqrt(1 + 1/n + (ln params - mean ln params)^2 / Sxx)``: the
    interval for a new model's J per token, wider the further the size is from the fitted ones."""
    p = float(params)
    if not (math.isfinite(p) and p > 0):
        raise UsageError(f"predict(): params must be positive and finite (got {params!r})")
    x = math.log(p)
    y = fit.log_coefficient + fit.exponent * x
    ci = None
    if fit.residual_sd is not None and fit.points > 2:
        se = fit.residual_sd * math.sqrt(1.0 + 1.0 / fit.points
                                         + (x - fit.log_params_mean) ** 2 / fit.log_params_sxx)
        half = t_quantile(0.975, fit.points - 2) * se
        ci = (math.exp(y - half), math.exp(y + half))
    outside = p < fit.params_min * (1 - 1e-9) or p > fit.params_max * (1 + 1e-9)
    return PowerLawPrediction(params=p, j_per_token=math.exp(y), j_per_token_ci95=ci, extrapolated=outside)


# --------------------------------------------------------------------------------------------
# JSON


def clean_json(x: Any) -> Any:
    """NaN and infinities become None, recursively (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    return x


__all__ = [
    "J_PER_KWH", "PHASES", "Attribution", "AttributionError", "Interval", "RunFigures", "attribute",
    "clean_json", "co2e_g", "co2e_g_per_1k_tokens", "collapse_methods", "cost_usd", "energy_label", "is_idle_record",
    "interval95", "measurement_basis", "measurement_phases", "phase_energy", "record_basis",
    "record_figures", "run_figures", "segment_phases", "t_quantile", "usd_per_m_tokens",
    "PowerLawFit", "PowerLawPrediction", "fit_power_law", "predict",
]
