"""What the dashboard reads from the store, and the figures it shows: all from greenprof.accounting.

The runs come from the store's public :meth:`Store.list_runs` (``limit=None``): the run rows with
their domains and phase summaries, attached in a few grouped queries (never every segment or
sample). Every figure of a run is :func:`greenprof.accounting.record_figures` on that record, the
same call ``greenprof runs / show / export / compare`` make (:func:`greenprof.cli_runs.summarize`),
so the dashboard and the CLI cannot disagree:

* ``j_per_token``: decode energy / generated tokens, on the run's basis: ``attributed`` (what the
  run is charged) when the run stored it, else ``gross`` (runs stored before attribution);
* ``co2e_g_per_1k_tokens`` and ``usd_per_m_tokens``: from that J per token at the run's own
  stored grid intensity, PUE and price (a run without a stored intensity: its region's, else the
  settings' fallback grid, and counted as ``unpriced``);
* tokens/s: generated tokens over the decode phase's duration.

Runs are then grouped in Python by (model, precision, batch size, hardware fingerprint, host,
**basis**, **kind**, and for measure runs the prompt and generation lengths): attributed and gross
runs are never averaged together, as different batch sizes never are, nor a server's requests
with measured generations, nor generations of other lengths. Only
completed runs with a J per token count, and **partial runs** (a domain lost mid-run: their
energy stops at the loss) are left out of every group; the page lists them separately and says
how many. Runs with an **uncertain** domain (a counter may have wrapped unseen) stay in their
group, which says how many of its runs are uncertain. The mean and the 95 % interval of J per
token are :func:`greenprof.accounting.interval95` over the group's runs (log-normal, so never
below zero; one run: no interval).

The power timeline of one run is :meth:`Store.power_timeline` (downsampled by the database) and
its phase spans come from :meth:`Store.get_run`'s segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

from greenprof import accounting
from greenprof.accounting import Interval

if TYPE_CHECKING:
    from greenprof.accounting import RunFigures
    from greenprof.store import RunRecord, Store, Timeline

#: Runs of one model on one machine at one precision and batch size, on one energy basis and one
#: method (a RAPL measurement and a CPU-time estimate are never averaged together), as the
#: dashboard aggregates them.
GROUP_KEY = ("model_name", "precision", "batch_size", "hardware_fingerprint", "host", "basis", "method")

#: The phases of a request, in the order they are drawn.
PHASE_ORDER = ("setup", "prefill", "decode", "teardown")


@dataclass
class RunRow:
    """One completed run and its figures (from accounting.record_figures), with its flags."""

    run: "RunRecord"
    fig: "RunFigures"
    method: str  # measured | estimated | replayed | mixed | none
    lost: dict[str, str]  # {domain: reason}: partial when not empty
    uncertain: dict[str, str]  # {domain: reason}
    tokens_per_s: float | None
    intensity_g_per_kwh: float
    pue: float
    price_usd_per_kwh: float
    unpriced: bool  # no stored or known grid intensity: costed at the fallback

    @property
    def id(self) -> int:
        return self.run.id

    @property
    def basis(self) -> str:
        return self.fig.basis

    @property
    def partial(self) -> bool:
        return bool(self.lost)

    @property
    def energy_label(self) -> str:
        return accounting.energy_label(self.method, self.basis)

    @property
    def charted(self) -> bool:
        """Counts in a model aggregate: complete (not partial) with a finite J per token."""
        j = self.fig.j_per_token
        return not self.lost and j is not None and math.isfinite(j)


@dataclass
class ModelAggregate:
    """One (model, precision, batch, hardware, basis) group of completed, complete runs."""

    model_name: str | None
    precision: str | None
    hardware_fingerprint: str | None
    host: str | None  # the host id (GREENPROF_HOST_ID): hosts sharing a database are compared
    batch_size: int | None  # sequences per generation; different batches are never averaged
    basis: str  # attributed | gross: never mixed in one group
    runs: int
    param_count: int | None
    method: str  # measured | estimated | replayed | mixed | none, over every domain of every run
    interval: Interval  # accounting.interval95 of the runs' J per generated token
    tokens_per_s: float | None
    phase_j_per_request: dict[str, float]  # setup, prefill, decode, teardown: means over runs
    prompt_tokens: float | None  # mean per request
    new_tokens: float | None  # mean generated tokens per request
    co2e_g_per_1k_own_grid: float  # each run costed at its own stored intensity and PUE
    usd_per_m_tokens: float  # each run at its own stored price (else the settings' price) and PUE
    latest_run_id: int
    regions: int  # distinct regions among the runs
    unpriced_runs: int  # runs without a stored intensity (costed at the fallback)
    run_ids: list[int] = field(default_factory=list)
    uncertain_run_ids: list[int] = field(default_factory=list)  # included, and marked
    partial_run_ids: list[int] = field(default_factory=list)  # same group, left out
    #: (J per token, PUE) of each run: what a what-if grid re-costs
    jpt_pue: list[tuple[float, float]] = field(default_factory=list, repr=False)
    # from the latest run of the group
    hardware: dict | None = None
    model_shape: str | None = None
    region: str | None = None
    intensity_g_per_kwh: float | None = None
    intensity_source: str | None = None
    intensity_year: int | None = None
    pue_min: float | None = None
    pue_max: float | None = None
    price_usd_per_kwh: float | None = None
    #: how the runs were made: measure, track or serve; never averaged together
    kind: str | None = None
    #: measure runs: (prompt tokens, generated tokens) of each generation; None for track and
    #: serve runs, whose requests differ one from the next
    workload: tuple[int | None, int | None] | None = None

    @property
    def j_per_token(self) -> float:
        """Mean J per generated token (decode) over the runs, on :attr:`basis`."""
        return self.interval.mean

    @property
    def j_per_token_ci95(self) -> list[float] | None:
        """[lo, hi] of the 95 % interval; None for a single run."""
        return self.interval.as_list()

    @property
    def energy_label(self) -> str:
        """"estimated energy (attributed)": what every energy figure of the group is."""
        return accounting.energy_label(self.method, self.basis)

    @property
    def prefill_j_per_request(self) -> float | None:
        return self.phase_j_per_request.get("prefill")

    @property
    def decode_j_per_request(self) -> float | None:
        return self.phase_j_per_request.get("decode")

    def co2e_g_per_1k_at(self, intensity_g_per_kwh: float) -> float:
        """g CO2e per 1k generated tokens had every run drawn from a grid of this intensity
        (each run at its own PUE), mean over the runs."""
        vals = [accounting.co2e_g_per_1k_tokens(j, intensity_g_per_kwh, pue) for j, pue in self.jpt_pue]
        return math.fsum(vals) / len(vals)


@dataclass
class Phase:
    kind: str
    start_s: float
    end_s: float
    segments: int


@dataclass
class RunTimeline:
    run_id: int
    model_name: str | None
    precision: str | None
    status: str
    kind: str
    lines: dict[str, "Timeline"] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)
    samples: int = 0  # raw samples behind the lines
    methods: dict[str, str | None] = field(default_factory=dict)  # per domain
    lost: dict[str, str] = field(default_factory=dict)
    uncertain: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return accounting.collapse_methods(self.methods)

    @property
    def partial(self) -> bool:
        return bool(self.lost)

    @property
    def energy_label(self) -> str:
        """Power samples are what the counters saw: always the gross basis."""
        return accounting.energy_label(self.method, "gross")


@dataclass
class Overview:
    total_runs: int
    completed_runs: int
    used_runs: int  # complete runs in the model aggregates: what the charts show
    models: list[ModelAggregate]
    partial_runs: list[RunRow] = field(default_factory=list)  # completed, left out of every aggregate
    uncertain_runs: list[RunRow] = field(default_factory=list)  # completed, with an uncertain domain
    gross_runs: int = 0  # charted runs on the gross basis (stored before attribution)
    runs: list["RunRecord"] = field(default_factory=list, repr=False)  # every run, newest first

    @property
    def flagged(self) -> list[RunRow]:
        """Partial and uncertain runs, newest first (a run that is both appears once)."""
        seen: dict[int, RunRow] = {r.id: r for r in self.partial_runs}
        for r in self.uncertain_runs:
            seen.setdefault(r.id, r)
        return sorted(seen.values(), key=lambda r: -r.id)


class _Grids:
    """The grid intensity and price each run is costed at, as ``greenprof runs`` resolves them:
    the run's stored intensity, else its region's (CodeCarbon's data), else the fallback."""

    def __init__(self, fallback_intensity: float, fallback_price: float) -> None:
        self.fallback_intensity = float(fallback_intensity)
        self.fallback_price = float(fallback_price)
        self._regions: dict[str, accounting.Grid | None] = {}

    def intensity(self, run: "RunRecord") -> tuple[float, bool]:
        """(g CO2e per kWh, whether it is the fallback)."""
        own = accounting.run_grid(run, self._regions)
        if own is not None:
            return float(own.g_per_kwh), False
        return self.fallback_intensity, True

    def price(self, run: "RunRecord") -> float:
        return float(run.price_usd_per_kwh) if run.price_usd_per_kwh is not None else self.fallback_price


def run_row(run: "RunRecord", grids: _Grids) -> RunRow:
    """A run's figures, exactly as :func:`greenprof.cli_runs.summarize` defines them."""
    g, unpriced = grids.intensity(run)
    pue = float(run.pue) if run.pue is not None else 1.0
    price = grids.price(run)
    fig = accounting.record_figures(run, intensity_g_per_kwh=g, pue=pue, price_usd_per_kwh=price)
    dec = run.phases.get("decode")
    decode_s = dec.duration_s if dec else (run.duration_s if not fig.phases_marked else None)
    n = fig.generated_tokens
    tps = n / decode_s if n is not None and decode_s else None
    return RunRow(
        run=run, fig=fig, method=accounting.collapse_methods(d.method for d in run.domains.values()),
        lost={d: r.lost_reason for d, r in run.domains.items() if r.lost_reason},
        uncertain={d: r.uncertain_reason for d, r in run.domains.items() if r.uncertain_reason},
        tokens_per_s=tps, intensity_g_per_kwh=g, pue=pue, price_usd_per_kwh=price, unpriced=unpriced)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return math.fsum(vals) / len(vals) if vals else None


def _per_request(x: float | int | None, fig: "RunFigures") -> float | None:
    """A run's total (phase energy, tokens) per request: a run of batch B serves B requests."""
    return x / fig.requests if x is not None else None


def _key(row: RunRow) -> tuple:
    """The group of a run: one model, precision, batch, machine, host, basis and method, made the
    same way (measure, track, serve) and, for measure runs, on the same prompt and generation
    lengths."""
    r = row.run
    return (r.model_name, r.precision, r.batch_size, r.hardware_fingerprint, r.host, row.basis, row.method,
            r.kind, (r.prompt_tokens, r.new_tokens) if r.kind == "measure" else None)


def aggregate(rows: Sequence[RunRow]) -> list[ModelAggregate]:
    """Model aggregates over ``rows`` (completed runs): charted runs only; partial runs of a group
    are counted in ``partial_run_ids`` and left out."""
    groups: dict[tuple, list[RunRow]] = {}
    partial: dict[tuple, list[int]] = {}
    for row in rows:
        if row.charted:
            groups.setdefault(_key(row), []).append(row)
        elif row.partial:
            partial.setdefault(_key(row), []).append(row.id)
    out: list[ModelAggregate] = []
    for key, members in groups.items():
        model_name, precision, batch, fingerprint, host, basis, _method, kind, workload = key
        latest = max(members, key=lambda r: r.id)
        lr = latest.run
        pues = [r.pue for r in members]
        out.append(ModelAggregate(
            model_name=model_name, precision=precision, hardware_fingerprint=fingerprint, host=host,
            batch_size=int(batch) if batch is not None else None, basis=basis, runs=len(members),
            param_count=max((r.run.param_count for r in members if r.run.param_count is not None),
                            default=None),
            method=accounting.collapse_methods(d.method for r in members for d in r.run.domains.values()),
            interval=accounting.interval95([r.fig.j_per_token for r in members]),
            tokens_per_s=_mean(r.tokens_per_s for r in members),
            phase_j_per_request={p: _mean(_per_request(r.fig.phase_energy_j.get(p), r.fig) for r in members)
                                 or 0.0 for p in PHASE_ORDER},
            prompt_tokens=_mean(_per_request(r.fig.prompt_tokens, r.fig) for r in members),
            new_tokens=_mean(_per_request(r.fig.generated_tokens, r.fig) for r in members),
            co2e_g_per_1k_own_grid=_mean(r.fig.co2e_g_per_1k_tokens for r in members) or 0.0,
            usd_per_m_tokens=_mean(r.fig.usd_per_m_tokens for r in members) or 0.0,
            latest_run_id=latest.id,
            regions=len({r.run.region for r in members if r.run.region is not None}),
            unpriced_runs=sum(r.unpriced for r in members),
            run_ids=sorted(r.id for r in members),
            uncertain_run_ids=sorted(r.id for r in members if r.uncertain),
            partial_run_ids=sorted(partial.get(key, [])),
            jpt_pue=[(r.fig.j_per_token, r.pue) for r in members],
            hardware=lr.hardware if isinstance(lr.hardware, dict) else None,
            model_shape=lr.model_shape, region=lr.region, intensity_g_per_kwh=lr.intensity_g_per_kwh,
            intensity_source=lr.intensity_source, intensity_year=lr.intensity_year,
            pue_min=min(pues), pue_max=max(pues), price_usd_per_kwh=lr.price_usd_per_kwh,
            kind=kind, workload=workload,
        ))
    out.sort(key=lambda m: (m.param_count is None, m.param_count or 0, str(m.model_name),
                            str(m.precision), m.batch_size or 0, str(m.hardware_fingerprint), str(m.host),
                            m.basis != "attributed"))
    return out


def completed_rows(runs: Iterable["RunRecord"], *, fallback_intensity: float,
                   fallback_price: float) -> list[RunRow]:
    grids = _Grids(fallback_intensity, fallback_price)
    return [run_row(r, grids) for r in runs if r.status == "completed"]


def model_aggregates(store: "Store", *, fallback_intensity: float,
                     fallback_price: float) -> list[ModelAggregate]:
    """Every model group of the store's completed, complete runs (see the module docstring)."""
    rows = completed_rows(store.list_runs(limit=None), fallback_intensity=fallback_intensity,
                          fallback_price=fallback_price)
    return aggregate(rows)


def overview(store: "Store", *, fallback_intensity: float, fallback_price: float) -> Overview:
    runs = store.list_runs(limit=None)
    rows = completed_rows(runs, fallback_intensity=fallback_intensity, fallback_price=fallback_price)
    models = aggregate(rows)
    return Overview(
        total_runs=len(runs), completed_runs=len(rows), used_runs=sum(m.runs for m in models),
        models=models,
        partial_runs=sorted((r for r in rows if r.partial), key=lambda r: -r.id),
        uncertain_runs=sorted((r for r in rows if r.uncertain), key=lambda r: -r.id),
        gross_runs=sum(m.runs for m in models if m.basis == "gross"),
        runs=runs,
    )


def default_timeline_run(store: "Store", runs: Sequence["RunRecord"] | None = None) -> int | None:
    """The latest completed ``measure`` run; else the latest completed run with samples."""
    if runs is None:
        runs = store.list_runs(limit=None)
    completed = sorted((r for r in runs if r.status == "completed"), key=lambda r: -r.id)
    for r in completed:
        if r.kind == "measure":
            return r.id
    for r in completed:
        if store.count_samples(r.id):
            return r.id
    return None


def run_timeline(store: "Store", run_id: int, max_points: int = 1000) -> RunTimeline:
    """The run's power per domain (at most ``max_points`` per domain, bucketed by the database)
    and the span of each phase (setup, prefill, decode, teardown, other) from its segments.
    Raises :class:`greenprof.store.RunNotFound` for an unknown run."""
    run = store.get_run(run_id)
    phases: dict[str, Phase] = {}
    for s in run.segments:
        end = s.start_s + s.duration_s
        ph = phases.get(s.kind)
        if ph is None:
            phases[s.kind] = Phase(s.kind, float(s.start_s), float(end), 1)
        else:
            ph.start_s, ph.end_s, ph.segments = min(ph.start_s, s.start_s), max(ph.end_s, end), ph.segments + 1
    lines = store.power_timeline(run_id, max_points=max_points)
    n = sum(sum(line.samples) for line in lines.values())
    return RunTimeline(
        run.id, run.model_name, run.precision, run.status, run.kind, lines, phases, n,
        methods={d: r.method for d, r in run.domains.items()},
        lost={d: r.lost_reason for d, r in run.domains.items() if r.lost_reason},
        uncertain={d: r.uncertain_reason for d, r in run.domains.items() if r.uncertain_reason})


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (j_per_token, tokens_per_s) no other point beats on both axes
    (less energy per token and at least as fast, or as little energy and faster), cheapest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_tps = [], -math.inf
    for i in order:
        j, tps = points[i]
        if not (math.isfinite(j) and math.isfinite(tps)):
            continue
        if tps > best_tps:
            front.append(i)
            best_tps = tps
    return front


# -- J per token vs size: the fit per precision and machine --------------------------------------------
#: Models fitted together: one precision on one machine, one energy basis and method, one batch size.
FIT_KEY = ("precision", "hardware_fingerprint", "basis", "method", "batch_size", "kind", "workload")


@dataclass
class SizeFit:
    """accounting.fit_power_law over the groups of one FIT_KEY (one point per model size: its mean J per
    generated token), the seed shapes it extrapolates and the smallest vs largest measured model."""

    precision: str | None
    hardware_fingerprint: str | None
    basis: str
    method: str
    batch_size: int | None
    models: list[ModelAggregate]  # the fitted points, smallest first
    fit: "accounting.PowerLawFit"
    extrapolated: list[dict] = field(default_factory=list)  # greenprof.ladder.extrapolate rows

    @property
    def energy_label(self) -> str:
        return accounting.energy_label(self.method, self.basis)

    @property
    def smallest(self) -> ModelAggregate:
        return self.models[0]

    @property
    def largest(self) -> ModelAggregate:
        return self.models[-1]

    @property
    def energy_ratio(self) -> float:
        """J per generated token of the largest measured model over the smallest's."""
        return self.largest.j_per_token / self.smallest.j_per_token

    @property
    def speed_ratio(self) -> float | None:
        """Tokens/s of the smallest over the largest's (how much faster the smallest is)."""
        a, b = self.smallest.tokens_per_s, self.largest.tokens_per_s
        return a / b if a and b else None


def size_fits(models: Sequence[ModelAggregate], *, intensity_g_per_kwh: float, pue: float,
              price_usd_per_kwh: float) -> list[SizeFit]:
    """One :class:`SizeFit` per FIT_KEY group with at least two model sizes (params known), widest
    span of sizes first; each extrapolates the seed shapes it did not measure
    (:func:`greenprof.ladder.extrapolate`)."""
    from greenprof.ladder import extrapolate

    groups: dict[tuple, list[ModelAggregate]] = {}
    for m in models:
        if m.param_count and m.param_count > 0 and m.j_per_token > 0:
            # runs stored without a batch size generated one sequence: batch 1; one kind of run
            # and one workload per fit
            key = (m.precision, m.hardware_fingerprint, m.basis, m.method, m.batch_size or 1, m.kind, m.workload)
            groups.setdefault(key, []).append(m)
    out: list[SizeFit] = []
    for (precision, fp, basis, method, batch, _kind, _workload), members in groups.items():
        # one point per size: a model measured under several names is one size, not several
        # (the one with the most runs, then the latest, stands for it)
        by_size: dict[int, ModelAggregate] = {}
        for m in members:
            best = by_size.get(m.param_count)
            if best is None or (m.runs, m.latest_run_id) > (best.runs, best.latest_run_id):
                by_size[m.param_count] = m
        if len(by_size) < 2:
            continue
        members = sorted(by_size.values(), key=lambda m: (m.param_count, str(m.model_name)))
        fit = accounting.fit_power_law([m.param_count for m in members], [m.j_per_token for m in members])
        rows, _ = extrapolate(fit, str(precision), [str(m.model_name).lower() for m in members],
                              intensity_g_per_kwh=intensity_g_per_kwh, pue=pue,
                              price_usd_per_kwh=price_usd_per_kwh)
        out.append(SizeFit(precision, fp, basis, method, batch, members, fit, rows))
    out.sort(key=lambda f: (-(f.largest.param_count / f.smallest.param_count), -sum(m.runs for m in f.models)))
    return out
