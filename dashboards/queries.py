"""What the dashboard reads from the store: SQL aggregates, never every segment or sample.

Per run (one SQL ``GROUP BY run_id`` over ``segments`` x ``segment_energy``), as
``greenprof.cli_runs.summarize`` and ``greenprof.measure`` define them:

* ``decode_j`` / ``prefill_j``: gross energy of the decode / prefill segments, summed over domains;
* ``decode_tokens``: tokens of the decode segments (else the run's ``new_tokens``);
* ``j_per_token = decode_j / decode_tokens``; ``tokens_per_s = decode_tokens / decode seconds``.

Per model (a second ``GROUP BY`` over those per-run rows, on the database side): runs are grouped by
``(model_name, precision, hardware_fingerprint)``; the group yields count, mean and sum of squares
of J per token (so the 95 % Student-t interval is the one :func:`greenprof.models.runner.summarize`
gives), mean tokens/s, mean prefill and decode energy per request, and the carbon and cost
averages re-costed per run from stored joules. Only completed runs with decode energy count.

The power timeline of one run comes from :meth:`Store.power_timeline` (downsampled in SQL) and its
phase boundaries from one grouped query over the run's segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greenprof.store import Store, Timeline

J_PER_KWH = 3.6e6

#: Runs of one model on one machine at one precision, as the dashboard aggregates them.
GROUP_KEY = ("model_name", "precision", "batch_size", "hardware_fingerprint")


@dataclass
class ModelAggregate:
    """One (model, precision, hardware) group of completed runs."""

    model_name: str | None
    precision: str | None
    hardware_fingerprint: str | None
    runs: int
    batch_size: int | None  # sequences per generation; different batches are never averaged
    param_count: int | None
    method: str  # measured | estimated | replayed | mixed | none
    j_per_token: float
    j_per_token_ci95: tuple[float, float]  # (nan, nan) for a single run
    tokens_per_s: float | None
    prefill_j_per_request: float | None
    decode_j_per_request: float | None
    prompt_tokens: float | None  # mean per request
    new_tokens: float | None  # mean decode tokens per request
    co2e_g_per_1k_own_grid: float  # each run costed at its own stored intensity and PUE
    jpt_x_pue: float  # mean of J/token x PUE, to re-cost at any other grid
    usd_per_m_tokens: float  # each run at its own stored price (else the settings' price) and PUE
    latest_run_id: int
    regions: int  # distinct regions among the runs
    unpriced_runs: int  # runs without a stored intensity (costed at the fallback)
    # filled from the latest run of the group
    hardware: dict | None = None
    model_shape: str | None = None
    region: str | None = None
    intensity_g_per_kwh: float | None = None
    intensity_source: str | None = None
    intensity_year: int | None = None
    pue_min: float | None = None
    pue_max: float | None = None
    price_usd_per_kwh: float | None = None

    def co2e_g_per_1k_at(self, intensity_g_per_kwh: float) -> float:
        """g CO2e per 1k generated tokens had every run drawn from a grid of this intensity."""
        return self.jpt_x_pue * 1e3 / J_PER_KWH * intensity_g_per_kwh


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


@dataclass
class Overview:
    total_runs: int
    completed_runs: int
    used_runs: int  # completed runs with decode energy: what the charts show
    models: list[ModelAggregate]


def ci95(n: int, mean: float, sum_sq: float) -> tuple[float, float]:
    """The two-sided 95 % Student-t interval of the mean from count, mean and sum of squares,
    the same interval :func:`greenprof.models.runner.summarize` computes from the values."""
    if n < 2 or not math.isfinite(mean):
        return math.nan, math.nan
    from greenprof.models.runner import t_quantile

    var = max(0.0, (sum_sq - n * mean * mean) / (n - 1))
    half = t_quantile(0.975, n - 1) * math.sqrt(var) / math.sqrt(n)
    return mean - half, mean + half


def _collapse(n_methods: int | None, method: str | None) -> str:
    if not method:
        return "none"
    return "mixed" if (n_methods or 0) > 1 else str(method)


def _f(x: Any) -> float | None:
    return float(x) if x is not None else None


def per_run_query(fallback_intensity: float, fallback_price: float):
    """One row per completed run with decode energy (a SQLAlchemy select, for a subquery)."""
    from sqlalchemy import Float, and_, case, cast, func, literal, select

    from greenprof.store import schema as S

    seg, se, runs, rd = S.segments, S.segment_energy, S.runs, S.run_domains
    decode = seg.c.kind == "decode"
    prefill = seg.c.kind == "prefill"
    energy = (
        select(
            se.c.run_id.label("run_id"),
            func.sum(case((decode, se.c.energy_j))).label("decode_j"),
            func.sum(case((prefill, se.c.energy_j))).label("prefill_j"),
        )
        .select_from(se.join(seg, and_(seg.c.run_id == se.c.run_id, seg.c.idx == se.c.idx)))
        .group_by(se.c.run_id)
        .subquery("energy")
    )
    tokens = (
        select(
            seg.c.run_id.label("run_id"),
            func.sum(case((decode, seg.c.tokens))).label("decode_tokens"),
            func.sum(case((decode, seg.c.duration_s))).label("decode_s"),
            func.sum(case((prefill, seg.c.tokens))).label("prefill_tokens"),
        )
        .group_by(seg.c.run_id)
        .subquery("tokens")
    )
    methods = (
        select(
            rd.c.run_id.label("run_id"),
            func.count(func.distinct(rd.c.method)).label("n_methods"),
            func.min(rd.c.method).label("method"),
        )
        .group_by(rd.c.run_id)
        .subquery("methods")
    )
    n_tok = cast(func.coalesce(tokens.c.decode_tokens, runs.c.new_tokens), Float)
    jpt = energy.c.decode_j / n_tok
    pue = func.coalesce(runs.c.pue, literal(1.0))
    intensity = func.coalesce(runs.c.intensity_g_per_kwh, literal(fallback_intensity))
    price = func.coalesce(runs.c.price_usd_per_kwh, literal(fallback_price))
    return (
        select(
            runs.c.id.label("run_id"),
            runs.c.model_name, runs.c.precision, runs.c.hardware_fingerprint, runs.c.param_count,
            runs.c.batch_size,
            runs.c.region, runs.c.intensity_g_per_kwh,
            jpt.label("jpt"),
            case((tokens.c.decode_s > 0, n_tok / tokens.c.decode_s)).label("tps"),
            energy.c.prefill_j, energy.c.decode_j,
            cast(func.coalesce(tokens.c.prefill_tokens, runs.c.prompt_tokens), Float).label("prefill_tokens"),
            n_tok.label("decode_tokens"),
            (jpt * pue).label("jpt_pue"),
            (jpt * pue * intensity).label("jpt_pue_g"),
            (jpt * pue * price).label("jpt_pue_usd"),
            pue.label("pue"),
            methods.c.n_methods, methods.c.method,
        )
        .select_from(runs.join(energy, energy.c.run_id == runs.c.id)
                     .join(tokens, tokens.c.run_id == runs.c.id)
                     .outerjoin(methods, methods.c.run_id == runs.c.id))
        .where(runs.c.status == "completed", energy.c.decode_j.is_not(None), n_tok > 0)
    )


def model_aggregates(store: "Store", *, fallback_intensity: float,
                     fallback_price: float) -> list[ModelAggregate]:
    """Every (model, precision, hardware) group, computed with ``GROUP BY`` in the database."""
    from sqlalchemy import case, func, select

    from greenprof.store import schema as S

    r = per_run_query(fallback_intensity, fallback_price).subquery("per_run")
    stmt = (
        select(
            r.c.model_name, r.c.precision, r.c.hardware_fingerprint, r.c.batch_size,
            func.count().label("n"),
            func.avg(r.c.jpt).label("jpt"),
            func.sum(r.c.jpt * r.c.jpt).label("jpt_sq"),
            func.avg(r.c.tps).label("tps"),
            func.avg(r.c.prefill_j).label("prefill_j"),
            func.avg(r.c.decode_j).label("decode_j"),
            func.avg(r.c.prefill_tokens).label("prefill_tokens"),
            func.avg(r.c.decode_tokens).label("decode_tokens"),
            func.avg(r.c.jpt_pue).label("jpt_pue"),
            func.avg(r.c.jpt_pue_g).label("jpt_pue_g"),
            func.avg(r.c.jpt_pue_usd).label("jpt_pue_usd"),
            func.max(r.c.param_count).label("params"),
            func.max(r.c.run_id).label("latest"),
            func.count(func.distinct(r.c.region)).label("regions"),
            func.sum(case((r.c.intensity_g_per_kwh.is_(None), 1), else_=0)).label("unpriced"),
            func.max(r.c.n_methods).label("n_methods"),
            func.count(func.distinct(r.c.method)).label("n_run_methods"),
            func.min(r.c.method).label("method"),
            func.min(r.c.pue).label("pue_min"),
            func.max(r.c.pue).label("pue_max"),
        )
        .group_by(r.c.model_name, r.c.precision, r.c.batch_size, r.c.hardware_fingerprint)
    )
    out: list[ModelAggregate] = []
    with store._read() as conn:  # typed errors for a locked or unreachable database
        for row in conn.execute(stmt):
            n = int(row.n)
            mean = float(row.jpt)
            n_methods = max(int(row.n_methods or 0), int(row.n_run_methods or 0))
            out.append(ModelAggregate(
                model_name=row.model_name, precision=row.precision,
                hardware_fingerprint=row.hardware_fingerprint, runs=n,
                batch_size=int(row.batch_size) if row.batch_size is not None else None,
                param_count=int(row.params) if row.params is not None else None,
                method=_collapse(n_methods, row.method),
                j_per_token=mean, j_per_token_ci95=ci95(n, mean, float(row.jpt_sq)),
                tokens_per_s=_f(row.tps), prefill_j_per_request=_f(row.prefill_j),
                decode_j_per_request=_f(row.decode_j), prompt_tokens=_f(row.prefill_tokens),
                new_tokens=_f(row.decode_tokens),
                co2e_g_per_1k_own_grid=float(row.jpt_pue_g) * 1e3 / J_PER_KWH,
                jpt_x_pue=float(row.jpt_pue),
                usd_per_m_tokens=float(row.jpt_pue_usd) * 1e6 / J_PER_KWH,
                latest_run_id=int(row.latest), regions=int(row.regions or 0),
                unpriced_runs=int(row.unpriced or 0),
                pue_min=_f(row.pue_min), pue_max=_f(row.pue_max),
            ))
        # descriptive columns from the latest run of each group: one row per group
        by_latest = {m.latest_run_id: m for m in out}
        ids = list(by_latest)
        runs = S.runs
        for i in range(0, len(ids), 500):
            for row in conn.execute(
                    select(runs.c.id, runs.c.hardware, runs.c.model_shape, runs.c.region,
                           runs.c.intensity_g_per_kwh, runs.c.intensity_source, runs.c.intensity_year,
                           runs.c.price_usd_per_kwh)
                    .where(runs.c.id.in_(ids[i:i + 500]))):
                m = by_latest[row.id]
                m.hardware = row.hardware if isinstance(row.hardware, dict) else None
                m.model_shape = row.model_shape
                m.region = row.region
                m.intensity_g_per_kwh = _f(row.intensity_g_per_kwh)
                m.intensity_source = row.intensity_source
                m.intensity_year = int(row.intensity_year) if row.intensity_year is not None else None
                m.price_usd_per_kwh = _f(row.price_usd_per_kwh)
    out.sort(key=lambda m: (m.param_count is None, m.param_count or 0, str(m.model_name),
                            str(m.precision), m.batch_size or 0, str(m.hardware_fingerprint)))
    return out


def overview(store: "Store", *, fallback_intensity: float, fallback_price: float) -> Overview:
    from sqlalchemy import case, func, select

    from greenprof.store import schema as S

    with store._read() as conn:  # typed errors for a locked or unreachable database
        total, completed = conn.execute(
            select(func.count(), func.coalesce(func.sum(case((S.runs.c.status == "completed", 1), else_=0)), 0))
        ).one()
    models = model_aggregates(store, fallback_intensity=fallback_intensity, fallback_price=fallback_price)
    return Overview(int(total), int(completed), sum(m.runs for m in models), models)


def default_timeline_run(store: "Store") -> int | None:
    """The latest completed ``measure`` run; else the latest completed run with samples."""
    from sqlalchemy import exists, func, select

    from greenprof.store import schema as S

    runs = S.runs
    with store._read() as conn:  # typed errors for a locked or unreachable database
        rid = conn.execute(select(func.max(runs.c.id))
                           .where(runs.c.status == "completed", runs.c.kind == "measure")).scalar()
        if rid is None:
            has_samples = exists().where(S.samples.c.run_id == runs.c.id)
            rid = conn.execute(select(func.max(runs.c.id))
                               .where(runs.c.status == "completed", has_samples)).scalar()
    return int(rid) if rid is not None else None


def run_timeline(store: "Store", run_id: int, max_points: int = 1000) -> RunTimeline:
    """The run's power per domain (at most ``max_points`` per domain, bucketed in SQL) and the
    span of each phase (prefill, decode, other) from its segments."""
    from sqlalchemy import func, select

    from greenprof.store import RunNotFound
    from greenprof.store import schema as S

    seg = S.segments
    with store._read() as conn:  # typed errors for a locked or unreachable database
        run = conn.execute(select(S.runs.c.id, S.runs.c.model_name, S.runs.c.precision, S.runs.c.status,
                                  S.runs.c.kind).where(S.runs.c.id == run_id)).first()
        if run is None:
            raise RunNotFound(f"no run {run_id} in {store.path or store.url}: see `greenprof runs`")
        phases = {
            kind: Phase(kind, float(lo), float(hi), int(n))
            for kind, lo, hi, n in conn.execute(
                select(seg.c.kind, func.min(seg.c.start_s), func.max(seg.c.start_s + seg.c.duration_s),
                       func.count())
                .where(seg.c.run_id == run_id).group_by(seg.c.kind))
        }
    lines = store.power_timeline(run_id, max_points=max_points)
    n = sum(sum(line.samples) for line in lines.values())
    return RunTimeline(run.id, run.model_name, run.precision, run.status, run.kind, lines, phases, n)


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
