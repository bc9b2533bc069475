"""`greenprof ladder`: the model-size ladder, the question greenprof exists to answer.

"Are smaller models cheaper, faster and greener, and by how much?" answered on the machine at
hand, in one command:

1. **measure** the given models (default: the SmolLM shapes that fit this machine's memory) with
   :func:`greenprof.measure.measure_models`, reusing completed runs already in the database for the
   same model, precision, machine (hardware fingerprint), energy domains and settings, unless
   ``--fresh``;
2. **fit** J per generated token = a x params^b per precision on this machine
   (:func:`greenprof.accounting.fit_power_law`: log-log least squares over one point per model,
   the exponent with its 95 % interval);
3. **extrapolate** the seed shapes that were not measured (Phi-3-mini, Llama-2-7B,
   Mistral-NeMo-12B, Falcon-40B) with 95 % prediction intervals
   (:func:`greenprof.accounting.predict`), labelled ``extrapolated`` and never mixed with
   measured rows; a measured run of a seed shape replaces its prediction;
4. **compare** the smallest and the largest measured model per token (energy, CO2e, $, speed);
5. put **API models** beside them (GPT-4o mini): the API's list price always, and with the
   ``ecologits`` extra installed, EcoLogits' estimate of its energy per output token (a range)
   and the CO2e of that energy on the chosen grid, computed offline from EcoLogits' own model
   repository and impact functions at run time.

Every figure comes from :mod:`greenprof.accounting`. Nothing heavy is imported at import time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import typer

from greenprof.errors import GreenprofError, UsageError

#: The SmolLM ladder, smallest first: the default when no MODEL is given (those that fit in memory).
SMOLLM_LADDER = ("smollm-135m", "smollm-360m", "smollm-1.7b")
#: The seed shapes extrapolated when not measured, smallest first.
SEED_SHAPES = ("phi-3-mini", "llama-2-7b", "mistral-nemo-12b", "falcon-40b")
#: A built-in shape is in the default ladder when this many times its weights fit in the memory
#: available now (onnxruntime holds the weights plus its own buffers and the KV cache).
MEMORY_HEADROOM = 1.5
#: What the ladder's runs are compared on (the same defaults as `greenprof measure`).
DEFAULT_PROMPT_TOKENS = 128
DEFAULT_NEW_TOKENS = 64
DEFAULT_RUNS = 3
DEFAULT_WARMUP = 1
#: EcoLogits' reference request: energy per output token of a request of this many output tokens.
REFERENCE_OUTPUT_TOKENS = 1000
ECOLOGITS_INSTALL = "pip install 'greenprof[ecologits]'"


@dataclass(frozen=True)
class ApiModel:
    """An API model shown beside local ones: its list price, and where EcoLogits knows it."""

    model: str  # display name
    provider: str  # EcoLogits' provider key
    ecologits_name: str  # EcoLogits' model name
    usd_per_m_input_tokens: float
    usd_per_m_output_tokens: float
    price_source: str


#: GPT-4o mini: the seeds' API comparison ($0.15 per M input tokens, $0.60 per M output tokens).
API_MODELS = (
    ApiModel("gpt-4o-mini", "openai", "gpt-4o-mini", 0.15, 0.60,
             "OpenAI API list price for gpt-4o-mini (USD per million tokens)"),
)


# -- the request ----------------------------------------------------------------------------------
@dataclass
class LadderRequest:
    models: Sequence[str] = ()  # empty: the default SmolLM ladder per precision
    precisions: Sequence[str] = ("fp32",)
    runs: int = DEFAULT_RUNS
    new_tokens: int = DEFAULT_NEW_TOKENS
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    warmup: int = DEFAULT_WARMUP
    threads: int | None = None
    fresh: bool = False


def canonical_precisions(precisions: Sequence[str]) -> list[str]:
    from greenprof.models import builder

    if not precisions:
        raise UsageError("give at least one --precision (fp32, int8 or int4)")
    out = []
    for p in precisions:
        try:
            out.append(builder.check_precision(p))
        except UsageError as e:
            raise UsageError(f"--precision: {e}") from None
    return list(dict.fromkeys(out))


def check_request(req: LadderRequest) -> list[tuple[str | None, Any]]:
    """Every number, precision and MODEL checked before anything is built or written; returns
    the plan: (precision, measure.ModelPlan) per built-in model and precision, and (None, plan)
    once per export (an export runs at its own precision)."""
    from pathlib import Path

    from greenprof.measure import MeasureRequest, check_model_spec, plan_model
    from greenprof.measure import check_request as check_measure

    precisions = canonical_precisions(req.precisions)
    check_measure(MeasureRequest(models=list(req.models) or list(SMOLLM_LADDER), runs=req.runs,
                                 new_tokens=req.new_tokens, prompt_tokens=req.prompt_tokens,
                                 warmup=req.warmup, threads=req.threads))
    plans: list[tuple[str | None, Any]] = []
    for spec in dict.fromkeys(req.models):
        if isinstance(check_model_spec(spec), Path):
            plans.append((None, plan_model(spec, MeasureRequest(
                models=[spec], precision=None, prompt_tokens=req.prompt_tokens, new_tokens=req.new_tokens))))
            continue
        for precision in precisions:
            plans.append((precision, plan_model(spec, MeasureRequest(
                models=[spec], precision=precision, prompt_tokens=req.prompt_tokens,
                new_tokens=req.new_tokens))))
    return plans


def shape_params(name: str) -> int | None:
    """The parameter count of a built-in shape, or None when this greenprof does not know it."""
    from greenprof.models import shapes

    try:
        shape = shapes.get_shape(name)
    except UsageError:
        return None
    own = getattr(shape, "param_count", None)
    if callable(own):
        return int(own())
    if isinstance(own, int):
        return own
    return int(shapes.param_count(shape))


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def default_models(precision: str, available_bytes: int | None = None) -> tuple[list[str], list[str]]:
    """The SmolLM shapes whose weights fit MEMORY_HEADROOM times in the available memory, and a
    note for each one left out."""
    from greenprof.models import builder

    avail = available_memory_bytes() if available_bytes is None else available_bytes
    chosen, notes = [], []
    for name in SMOLLM_LADDER:
        need = builder.planned_bytes(name, precision)
        if need * MEMORY_HEADROOM <= avail:
            chosen.append(name)
        else:
            notes.append(f"{name} {precision} left out of the default ladder: its weights need "
                         f"{need / 2**30:.1f} GiB and {avail / 2**30:.1f} GiB of memory is available "
                         f"(x{MEMORY_HEADROOM:g} headroom); it is extrapolated instead")
    return chosen, notes


# -- reusing stored runs --------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """What two runs must share to be averaged as the same measurement."""

    hardware_fingerprint: str
    domains: tuple[str, ...]
    prompt_tokens: int
    new_tokens: int
    threads: int | None
    provider: str = "CPUExecutionProvider"
    collectors: str = "cpu (auto)"
    spinning: bool = False
    graph_opt: str = "all"
    warmup: int | None = None  # None: any (a run stored before warm-ups were recorded counts too)


def built_model_hash(name: str, precision: str) -> str | None:
    """The file hash of the built-in model in the cache, or None when it is not built yet."""
    from greenprof.models import builder

    if not builder.is_built(name, precision):
        return None
    return builder.read_metadata(builder.model_dir(name, precision)).get("model_sha256")


def matches(run: Any, name: str, precision: str, s: RunSettings, model_file_hash: str | None = None) -> bool:
    """Whether a stored run of the built-in ``name`` is one the ladder would make now (and of the
    same model file, when the model is built and its hash known)."""
    from greenprof import accounting

    extra = run.extra if isinstance(run.extra, dict) else {}
    session = extra.get("session") or {}
    return (run.kind == "measure" and run.status == "completed" and run.model_name == name
            and run.model_shape == name and run.precision == precision
            and run.hardware_fingerprint == s.hardware_fingerprint
            and run.prompt_tokens == s.prompt_tokens and run.new_tokens == s.new_tokens
            and (run.batch_size or 1) == 1 and run.provider == s.provider and run.threads == s.threads
            and run.collectors == s.collectors
            and bool(session.get("spinning", False)) == s.spinning
            and session.get("graph_opt", "all") == s.graph_opt
            and (s.warmup is None or session.get("warmup", s.warmup) == s.warmup)
            and tuple(sorted(run.domains)) == s.domains
            and not any(d.lost_reason for d in run.domains.values())
            and accounting.record_basis(run) == "attributed"
            and "decode" in run.phases
            and (model_file_hash is None or run.model_file_hash == model_file_hash))


# -- one model's figures from its stored runs -----------------------------------------------------
@dataclass
class MeasuredModel:
    model: str
    params: int | None
    precision: str
    runs: list[Any]  # RunRecords, newest first
    reused: bool
    j_per_token: float
    interval: Any  # accounting.Interval
    tokens_per_s: float | None
    method: str
    basis: str
    co2e_g_per_1k_tokens: float
    usd_per_m_tokens: float
    uncertain_run_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "params": self.params, "precision": self.precision, "origin": "measured",
            "j_per_token": self.j_per_token, "j_per_token_ci95": self.interval.as_list(),
            "co2e_g_per_1k_tokens": self.co2e_g_per_1k_tokens, "usd_per_m_tokens": self.usd_per_m_tokens,
            "tokens_per_s": self.tokens_per_s, "runs": len(self.runs),
            "run_ids": sorted(r.id for r in self.runs), "reused": self.reused,
            "method": self.method, "basis": self.basis, "uncertain_run_ids": self.uncertain_run_ids,
        }


def measured_model(name: str, precision: str, runs: Sequence[Any], reused: bool, *,
                   intensity_g_per_kwh: float, pue: float, price_usd_per_kwh: float) -> MeasuredModel:
    """Mean J per generated token over ``runs`` (accounting.record_figures per run, re-costed at the
    current grid, PUE and price) with its 95 % interval, tokens/s from the decode phase."""
    from greenprof import accounting

    figs = [accounting.record_figures(r, intensity_g_per_kwh=intensity_g_per_kwh, pue=pue,
                                      price_usd_per_kwh=price_usd_per_kwh) for r in runs]
    iv = accounting.interval95([f.j_per_token for f in figs])
    speeds = []
    for r, f in zip(runs, figs):
        dec = r.phases.get("decode")
        if dec is not None and dec.duration_s and f.generated_tokens:
            speeds.append(f.generated_tokens / dec.duration_s)
    params = max((r.param_count for r in runs if r.param_count), default=None)
    bases = {f.basis for f in figs}
    return MeasuredModel(
        model=name, params=params, precision=precision, runs=list(runs), reused=reused,
        j_per_token=iv.mean, interval=iv,
        tokens_per_s=math.fsum(speeds) / len(speeds) if speeds else None,
        method=accounting.collapse_methods(d.method for r in runs for d in r.domains.values()),
        basis=bases.pop() if len(bases) == 1 else "mixed",
        co2e_g_per_1k_tokens=accounting.co2e_g_per_1k_tokens(iv.mean, intensity_g_per_kwh, pue),
        usd_per_m_tokens=accounting.usd_per_m_tokens(iv.mean, price_usd_per_kwh, pue),
        uncertain_run_ids=sorted(r.id for r in runs if any(d.uncertain_reason for d in r.domains.values())),
    )


# -- the fit and the extrapolations ---------------------------------------------------------------
def fit_models(points: Sequence[tuple[str, int | None, float]]):
    """accounting.fit_power_law over (model, params, J per token) points that have a parameter
    count; None when fewer than two sizes. Returns (fit or None, names used)."""
    from greenprof import accounting

    usable = [(n, p, j) for n, p, j in points if p and p > 0 and j is not None and j > 0 and math.isfinite(j)]
    if len({p for _, p, _ in usable}) < 2:
        return None, [n for n, _, _ in usable]
    return accounting.fit_power_law([p for _, p, _ in usable], [j for _, _, j in usable]), \
        [n for n, _, _ in usable]


def fit_sentence(fit: Any, precision: str, models: int, energy: str) -> str:
    """'on this machine J/token grows as params^0.93 [0.85, 1.01] (fp32, 3 models, ...)'."""
    if fit.exponent_ci95 is not None:
        lo, hi = fit.exponent_ci95
        ci = f" [{lo:.2f}, {hi:.2f}]"
        what = "95% interval of the exponent"
    else:
        ci = ""
        what = "two sizes: the line goes through both, no interval"
    return (f"on this machine J/token grows as params^{fit.exponent:.2f}{ci} "
            f"({precision}, {models} models, {energy}; {what})")


def extrapolate(fit: Any, precision: str, measured: Sequence[str], *, intensity_g_per_kwh: float,
                pue: float, price_usd_per_kwh: float, seeds: Sequence[str] = SEED_SHAPES
                ) -> tuple[list[dict], list[str]]:
    """The seed shapes not in ``measured``, predicted by ``fit`` (accounting.predict), with CO2e and
    $ from accounting; and a note for each seed this greenprof does not know."""
    from greenprof import accounting

    rows, notes = [], []
    for name in seeds:
        if name in measured:
            continue  # a measured run replaces the prediction
        params = shape_params(name)
        if params is None:
            notes.append(f"{name}: not among this greenprof's built-in shapes, so not extrapolated")
            continue
        pr = accounting.predict(fit, params)
        ci = pr.ci95_list()

        def co2(j):
            return accounting.co2e_g_per_1k_tokens(j, intensity_g_per_kwh, pue)

        def usd(j):
            return accounting.usd_per_m_tokens(j, price_usd_per_kwh, pue)

        rows.append({
            "model": name, "params": params, "precision": precision, "origin": "extrapolated",
            "j_per_token": pr.j_per_token, "j_per_token_ci95": ci,
            "co2e_g_per_1k_tokens": co2(pr.j_per_token),
            "co2e_g_per_1k_tokens_ci95": [co2(v) for v in ci] if ci else None,
            "usd_per_m_tokens": usd(pr.j_per_token),
            "usd_per_m_tokens_ci95": [usd(v) for v in ci] if ci else None,
            "fit_exponent": fit.exponent, "beyond_measured_sizes": pr.extrapolated,
        })
    return rows, notes


def comparison(models: Sequence[MeasuredModel]) -> dict | None:
    """The smallest and the largest measured model (by parameters) per token: energy, CO2e, $
    and speed side by side, with the ratios largest / smallest."""
    sized = [m for m in models if m.params]
    if len({m.params for m in sized}) < 2:
        return None
    small = min(sized, key=lambda m: m.params)
    large = max(sized, key=lambda m: m.params)

    def ratio(a, b):
        return a / b if a is not None and b else None

    def side(m: MeasuredModel) -> dict:
        return {"model": m.model, "params": m.params, "j_per_token": m.j_per_token,
                "co2e_g_per_1k_tokens": m.co2e_g_per_1k_tokens, "usd_per_m_tokens": m.usd_per_m_tokens,
                "tokens_per_s": m.tokens_per_s}

    return {
        "precision": small.precision, "smallest": side(small), "largest": side(large),
        "params_ratio": ratio(large.params, small.params),
        "energy_ratio": ratio(large.j_per_token, small.j_per_token),
        "co2e_ratio": ratio(large.co2e_g_per_1k_tokens, small.co2e_g_per_1k_tokens),
        "usd_ratio": ratio(large.usd_per_m_tokens, small.usd_per_m_tokens),
        "speed_ratio": ratio(large.tokens_per_s, small.tokens_per_s),
        "energy": small.method if small.method == large.method else "mixed",
    }


def comparison_sentence(c: dict) -> str:
    """'measured here (fp32): smollm-135m (135M) vs smollm-1.7b (1.71B, 12.7x the parameters): ...'."""
    from greenprof.fmt import human_params

    s, lg = c["smallest"], c["largest"]
    text = (f"measured here ({c['precision']}): {s['model']} ({human_params(s['params'])}) vs {lg['model']} "
            f"({human_params(lg['params'])}, {c['params_ratio']:.3g}x the parameters): "
            f"{s['j_per_token']:.3g} vs {lg['j_per_token']:.3g} J per generated token, "
            f"{s['co2e_g_per_1k_tokens']:.3g} vs {lg['co2e_g_per_1k_tokens']:.3g} g CO2e per 1k tokens, "
            f"${s['usd_per_m_tokens']:.3g} vs ${lg['usd_per_m_tokens']:.3g} of electricity per M tokens: "
            f"the larger takes {c['energy_ratio']:.3g}x the energy, CO2e and electricity cost per token")
    if c["speed_ratio"]:
        faster = (f"the smaller is {1 / c['speed_ratio']:.3g}x as fast" if c["speed_ratio"] <= 1
                  else f"the larger is {c['speed_ratio']:.3g}x as fast")
        text += f"; {s['tokens_per_s']:.3g} vs {lg['tokens_per_s']:.3g} tokens/s: {faster}"
    return text


# -- API references -------------------------------------------------------------------------------
def _value_range(v: Any) -> tuple[float, float]:
    lo = getattr(v, "min", v)
    hi = getattr(v, "max", v)
    return float(lo), float(hi)


def ecologits_version() -> str | None:
    """The installed EcoLogits version, or None when the extra is not installed."""
    try:
        import ecologits
    except ImportError:
        return None
    from importlib import metadata

    try:
        return metadata.version("ecologits")
    except metadata.PackageNotFoundError:
        return str(getattr(ecologits, "__version__", "?"))


def ecologits_estimate(api: ApiModel, output_tokens: int = REFERENCE_OUTPUT_TOKENS) -> dict | None:
    """EcoLogits' estimate for one request of ``output_tokens`` output tokens to ``api``, computed
    now from its installed model repository and impact functions (offline): energy per output
    token as its [min, max] range and what its methodology assumed. None without the extra;
    GreenprofError when EcoLogits does not know the model."""
    try:
        from ecologits.tracers.utils import llm_impacts
    except ImportError:
        return None
    import logging

    from greenprof import accounting

    log = logging.getLogger("ecologits")
    was = log.disabled
    log.disabled = True  # its warnings are returned below, not printed
    try:
        impacts = llm_impacts(provider=api.provider, model_name=api.ecologits_name,
                              output_token_count=output_tokens, request_latency=math.inf)
    finally:
        log.disabled = was
    if getattr(impacts, "errors", None):
        raise GreenprofError(f"EcoLogits {ecologits_version()} cannot estimate {api.provider}/"
                             f"{api.ecologits_name}: {impacts.errors[0]}")
    kwh_lo, kwh_hi = _value_range(impacts.energy.value)
    j_range = [kwh_lo * accounting.J_PER_KWH / output_tokens, kwh_hi * accounting.J_PER_KWH / output_tokens]
    assumed = []
    try:
        from ecologits.impacts import llm as llm_model
        from ecologits.model_repository import models
        from ecologits.tracers.utils import PROVIDER_CONFIG_MAP

        m = models.find_model(provider=api.provider, model_name=api.ecologits_name)
        if m is not None:
            p_lo, p_hi = _value_range(getattr(m.architecture.parameters, "active", m.architecture.parameters))
            assumed.append(f"{p_lo:g}-{p_hi:g} B active parameters" if p_lo != p_hi
                           else f"{p_lo:g} B active parameters")
            dep = m.deployment
            if dep is not None and dep.tps:
                assumed.append(f"{dep.tps:g} output tokens/s and {dep.ttft:g} s to the first token")
        assumed.append(f"GPU energy regressed on the parameter count at batch {llm_model.BATCH_SIZE} "
                       f"on {llm_model.GPU_MEMORY:g} GB GPUs, plus the server's share "
                       f"({llm_model.SERVER_POWER:g} kW per {llm_model.SERVER_GPUS} GPUs)")
        pue = PROVIDER_CONFIG_MAP[api.provider].datacenter_pue
        lo, hi = _value_range(pue)
        assumed.append(f"x the provider's data-centre PUE {lo:g}" + (f"-{hi:g}" if hi != lo else ""))
        params_range = [p_lo * 1e9, p_hi * 1e9] if m is not None else None
    except (ImportError, AttributeError, KeyError, TypeError):  # another EcoLogits layout
        params_range = None
    warnings = [str(getattr(w, "code", w)) for w in (impacts.warnings or [])]
    return {"version": ecologits_version(), "j_per_token_range": j_range, "output_tokens": output_tokens,
            "assumptions": assumed, "warnings": warnings, "params_range": params_range}


def api_references(intensity_g_per_kwh: float, region: str,
                   estimate: Callable[[ApiModel], dict | None] = ecologits_estimate) -> tuple[list[dict], list[str]]:
    """One reference row per API model: its list price, and EcoLogits' energy range with its CO2e
    on the given grid when the extra is installed (else a note on how to add it)."""
    from greenprof import accounting

    rows, notes = [], []
    for api in API_MODELS:
        est = estimate(api)
        row: dict[str, Any] = {
            "model": api.model, "provider": api.provider,
            "usd_per_m_input_tokens": api.usd_per_m_input_tokens,
            "usd_per_m_output_tokens": api.usd_per_m_output_tokens,
            "j_per_token_range": None, "co2e_g_per_1k_tokens_range": None, "params_range": None,
            "method": None, "source": api.price_source,
        }
        if est is None:
            notes.append(f"{api.model}: price only; for its energy and CO2e estimated by EcoLogits: "
                         f"{ECOLOGITS_INSTALL}")
        else:
            lo, hi = est["j_per_token_range"]
            row.update({
                "j_per_token_range": [lo, hi],
                "co2e_g_per_1k_tokens_range": [
                    accounting.co2e_g_per_1k_tokens(lo, intensity_g_per_kwh, 1.0),
                    accounting.co2e_g_per_1k_tokens(hi, intensity_g_per_kwh, 1.0)],
                "co2e_region": region,
                "params_range": est.get("params_range"),
                "method": "estimated",
                "estimator": f"EcoLogits {est['version']}",
                "warnings": est["warnings"],
                "source": (f"energy estimated by EcoLogits {est['version']} (its methodology: "
                           + "; ".join(est["assumptions"])
                           + f"; per output token of a {est['output_tokens']:,}-token request), "
                           f"CO2e = that energy x the {region} grid's intensity (the provider's PUE is "
                           f"already in it); price: {api.price_source}"),
            })
        rows.append(row)
    return rows, notes


# -- the whole job --------------------------------------------------------------------------------
def run_ladder(req: LadderRequest, *, settings=None, progress: Callable[[str], None] | None = None,
               build_progress: Callable[[str, int, int], None] | None = None,
               references: Callable[..., tuple[list[dict], list[str]]] = api_references) -> dict:
    """Measure (or reuse), fit, extrapolate and compare; return the JSON-ready document."""
    import dataclasses

    from greenprof import carbon, hostinfo
    from greenprof.config import load_settings, resolve_intensity
    from greenprof.measure import MeasureRequest, collectors_for_device, default_threads, measure_models

    say = progress or (lambda msg: None)
    settings = settings or load_settings()
    grid, grid_note = resolve_intensity(settings)
    pue = settings.pue
    price = settings.price_usd_per_kwh if settings.price_usd_per_kwh is not None else carbon.DEFAULT_PRICE_USD_PER_KWH
    threads = req.threads if req.threads is not None else settings.threads
    notes: list[str] = [grid_note] if grid_note else []
    precisions = canonical_precisions(req.precisions)
    default_sets: dict[str, list[str]] | None = None
    left_out: dict[str, list[str]] = {}  # default shapes that do not fit: extrapolated instead
    if not req.models:
        default_sets = {}
        for precision in precisions:
            default_sets[precision], why = default_models(precision)
            left_out[precision] = [n for n in SMOLLM_LADDER if n not in default_sets[precision]]
            notes.extend(why)
        models = list(dict.fromkeys(m for chosen in default_sets.values() for m in chosen))
        if not models:
            raise GreenprofError(f"not even {SMOLLM_LADDER[0]} fits the memory available now: free some "
                                 "memory or name smaller models (e.g. tiny)")
        req = dataclasses.replace(req, models=models)
    plans = check_request(req)
    if default_sets is not None:  # each precision: only its own models that fit
        plans = [(p, plan) for p, plan in plans if plan.name in default_sets[p]]
    hw = hostinfo.hardware()
    fingerprint = hostinfo.fingerprint(hw)
    if threads is None:
        threads = default_threads()
    base = RunSettings(hardware_fingerprint=fingerprint, domains=tuple(sorted(collectors_for_device("cpu"))),
                       prompt_tokens=req.prompt_tokens, new_tokens=req.new_tokens, threads=threads,
                       warmup=req.warmup)

    from greenprof.store import open_store, preflight

    db_setting = settings.describe("db") if hasattr(settings, "describe") else "--db"
    preflight(settings.db, setting=db_setting, keep=True)
    store = open_store(settings.db, setting=db_setting)
    measured: list[MeasuredModel] = []
    try:
        for precision, plan in plans:
            name = plan.name
            runs: list[Any] = []
            if plan.builtin and not req.fresh:
                stored = store.list_runs(kind="measure", model_name=name, status="completed", limit=None)
                digest = built_model_hash(name, precision)
                runs = [r for r in stored if matches(r, name, precision, base, digest)][:req.runs]
            reused = len(runs) == req.runs
            if reused:
                ids = ", ".join(str(r.id) for r in sorted(runs, key=lambda r: r.id))
                say(f"{name} {precision}: reusing runs {ids} (same machine and settings; --fresh measures again)")
            else:
                doc = measure_models(MeasureRequest(
                    models=[plan.spec], precision=precision, prompt_tokens=req.prompt_tokens,
                    new_tokens=req.new_tokens, runs=req.runs, warmup=req.warmup, threads=threads,
                    sample_hz=settings.sample_hz), settings=settings, store=store, progress=say,
                    build_progress=build_progress)
                summary = doc["summary"][0]
                ids = set(summary["run_ids"])
                name, precision = summary["model"], summary["precision"]
                runs = [r for r in store.list_runs(kind="measure", model_name=name, limit=None) if r.id in ids]
            mm = measured_model(name, precision, runs, reused, intensity_g_per_kwh=grid.intensity_g_per_kwh,
                                pue=pue, price_usd_per_kwh=price)
            if mm.params is None and plan.builtin:
                mm.params = shape_params(name)
            measured.append(mm)
    finally:
        store.close()

    fits, extrapolated, comparisons = [], [], []
    for precision in dict.fromkeys(m.precision for m in measured):
        group = [m for m in measured if m.precision == precision]
        no_params = [m.model for m in group if not m.params]
        if no_params:
            notes.append(f"{', '.join(no_params)} ({precision}): no parameter count, left out of the fit")
        fit, used = fit_models([(m.model, m.params, m.j_per_token) for m in group])
        if fit is None:
            notes.append(f"{precision}: measure at least two model sizes to fit J/token against size")
            continue
        fitted = [m for m in group if m.model in used]
        energy = _energy_of(fitted)
        fits.append({"precision": precision, "hardware_fingerprint": fingerprint, **fit.to_dict(),
                     "models": used, "energy": energy,
                     "sentence": fit_sentence(fit, precision, fit.points, energy)})
        rows, seed_notes = extrapolate(fit, precision, [m.model for m in group],
                                       intensity_g_per_kwh=grid.intensity_g_per_kwh, pue=pue,
                                       price_usd_per_kwh=price,
                                       seeds=tuple(left_out.get(precision, ())) + SEED_SHAPES)
        bases = sorted({m.basis for m in fitted})
        for r in rows:  # what the fitted points' energy is
            r.update(method=_method_of(fitted), basis=bases[0] if len(bases) == 1 else "mixed")
        extrapolated.extend(rows)
        notes.extend(n for n in seed_notes if n not in notes)
        c = comparison(group)
        if c is not None:
            c["sentence"] = comparison_sentence(c)
            comparisons.append(c)
    refs, ref_notes = references(grid.intensity_g_per_kwh, grid.region)
    notes.extend(ref_notes)
    from greenprof import accounting

    return accounting.clean_json({
        "machine": {"hardware_fingerprint": fingerprint, "cpu_model": hw.get("cpu_model"),
                    "cpu_logical": hw.get("cpu_logical"), "memory_gib": hw.get("memory_gib"),
                    "gpus": hw.get("gpus")},
        "settings": {"prompt_tokens": req.prompt_tokens, "new_tokens": req.new_tokens, "runs": req.runs,
                     "warmup": req.warmup, "batch_size": 1, "threads": threads, "provider": "cpu",
                     "spinning": False, "graph_opt": "all", "fresh": req.fresh},
        "grid": {"region": grid.region, "name": grid.name, "intensity_g_per_kwh": grid.intensity_g_per_kwh,
                 "source": grid.source, "year": grid.year},
        "pue": pue, "price_usd_per_kwh": price,
        "fit": fits[0] if fits else None,
        "fits": fits,
        "models": [m.to_dict() for m in measured] + extrapolated,
        "comparison": comparisons,
        "references": refs,
        "notes": notes,
    })


def _method_of(models: Sequence[MeasuredModel]) -> str:
    methods = {m.method for m in models}
    return methods.pop() if len(methods) == 1 else "mixed"


def _energy_of(models: Sequence[MeasuredModel]) -> str:
    from greenprof.accounting import energy_label

    bases = {m.basis for m in models}
    return energy_label(_method_of(models), bases.pop() if len(bases) == 1 else "mixed")


# -- printing -------------------------------------------------------------------------------------
def print_ladder(doc: dict) -> None:
    """The answer as tables and sentences on stdout; notes on stderr."""
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from greenprof.accounting import energy_label
    from greenprof.fmt import human_params

    # as measure prints: piped tables are never wrapped, notes one line each
    # data, never markup: a "[n/a]" interval or a model named "x [bold]" is printed as it is
    out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 1000, highlight=False, markup=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    st, grid, mc = doc["settings"], doc["grid"], doc["machine"]

    def num(x, digits=4) -> str:
        return "-" if x is None else f"{x:.{digits}g}"

    def ci(v, rng) -> str:
        return f"{num(v)} [{num(rng[0])}, {num(rng[1])}]" if rng else f"{num(v)} [n/a]"

    out.print(f"Model-size ladder on {mc.get('cpu_model') or 'this machine'} ({mc.get('cpu_logical')} threads), "
              f"{st['prompt_tokens']}-token prompt + {st['new_tokens']} generated tokens, {st['runs']} runs per "
              f"model; {grid['name']} grid {grid['intensity_g_per_kwh']:.0f} g CO2e/kWh, PUE {doc['pue']:g}, "
              f"${doc['price_usd_per_kwh']:g}/kWh", markup=False)
    measured = [m for m in doc["models"] if m["origin"] == "measured"]
    t = Table(title="Measured on this machine", title_justify="left")
    for col, just in (("model", "left"), ("params", "right"), ("precision", "left"), ("energy", "left"),
                      ("runs", "right"), ("tokens/s", "right"), ("J/gen token (95% CI)", "right"),
                      ("g CO2e/1k gen tokens", "right"), ("$/M gen tokens (electricity)", "right")):
        t.add_column(col, justify=just)
    for m in measured:
        runs = f"{m['runs']}" + (" (reused)" if m["reused"] else "")
        t.add_row(m["model"], human_params(m["params"]), m["precision"],
                  energy_label(m["method"], m["basis"]) + (" uncertain" if m["uncertain_run_ids"] else ""),
                  runs, num(m["tokens_per_s"], 3), ci(m["j_per_token"], m["j_per_token_ci95"]),
                  num(m["co2e_g_per_1k_tokens"]), num(m["usd_per_m_tokens"]))
    out.print(t)
    for f in doc["fits"]:
        out.print(f"Fit: {f['sentence']}", markup=False)
    extra = [m for m in doc["models"] if m["origin"] == "extrapolated"]
    if extra:
        t = Table(title="Extrapolated from the fit (not measured; 95% prediction intervals)",
                  title_justify="left")
        for col, just in (("model", "left"), ("params", "right"), ("precision", "left"),
                          ("J/gen token [95% PI]", "right"), ("g CO2e/1k gen tokens", "right"),
                          ("$/M gen tokens (electricity)", "right"), ("energy", "left")):
            t.add_column(col, justify=just)
        for m in extra:
            t.add_row(m["model"], human_params(m["params"]), m["precision"],
                      ci(m["j_per_token"], m["j_per_token_ci95"]), ci(m["co2e_g_per_1k_tokens"],
                                                                      m["co2e_g_per_1k_tokens_ci95"]),
                      ci(m["usd_per_m_tokens"], m["usd_per_m_tokens_ci95"]),
                      f"extrapolated (params^{m['fit_exponent']:.2f}) from "
                      + energy_label(m["method"], m["basis"]))
        out.print(t)
    if doc["references"]:
        t = Table(title="API models (reference, not measured here)", title_justify="left")
        for col, just in (("model", "left"), ("J/output token", "right"),
                          (f"g CO2e/1k output tokens ({grid['region']})", "right"),
                          ("$/M input tokens (price)", "right"), ("$/M output tokens (price)", "right"),
                          ("estimated by", "left")):
            t.add_column(col, justify=just)
        for r in doc["references"]:
            j, c = r["j_per_token_range"], r["co2e_g_per_1k_tokens_range"]
            t.add_row(r["model"], f"{num(j[0], 3)}-{num(j[1], 3)}" if j else "-",
                      f"{num(c[0], 3)}-{num(c[1], 3)}" if c else "-",
                      f"{r['usd_per_m_input_tokens']:.2f}", f"{r['usd_per_m_output_tokens']:.2f}",
                      r.get("estimator") or f"price only ({ECOLOGITS_INSTALL})")
        out.print(t)
    for c in doc["comparison"]:
        out.print(c["sentence"][0].upper() + c["sentence"][1:] + ".", markup=False)
    for r in doc["references"]:
        if r.get("estimator"):
            err.print(f"note: {r['model']}: {escape(r['source'])}")
    for n in dict.fromkeys(doc["notes"]):
        err.print(f"[yellow]note:[/yellow] {escape(n)}")


# -- the command ----------------------------------------------------------------------------------
def ladder_cmd(
    models: Optional[list[str]] = typer.Argument(
        None, metavar="[MODEL]...",
        help="Built-in names or ONNX exports. Default: the SmolLM ladder (smollm-135m, smollm-360m, "
             "smollm-1.7b) that fits this machine's free memory."),
    precision: Optional[list[str]] = typer.Option(
        None, "--precision", metavar="P", help="fp32, int8 or int4; repeatable (one fit each). Default fp32."),
    runs: int = typer.Option(DEFAULT_RUNS, "--runs", help="Measured runs per model."),
    new_tokens: int = typer.Option(DEFAULT_NEW_TOKENS, "--new-tokens", help="Tokens generated per run."),
    prompt_tokens: int = typer.Option(DEFAULT_PROMPT_TOKENS, "--prompt-tokens", help="Synthetic prompt length."),
    warmup: int = typer.Option(DEFAULT_WARMUP, "--warmup", help="Unmeasured warm-up generations per model."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads."),
    fresh: bool = typer.Option(False, "--fresh", help="Measure again even when the database has runs of the "
                               "same model, precision, machine and settings."),
    region: Optional[str] = typer.Option(None, "--region", help="Grid region for CO2e (ISO3, ISO2, name, USA/CA)."),
    intensity: Optional[float] = typer.Option(None, "--intensity", help="Grid intensity in g CO2e/kWh."),
    pue: Optional[float] = typer.Option(None, "--pue", help="Data-centre PUE (default 1.0)."),
    price_kwh: Optional[float] = typer.Option(None, "--price-kwh", help="Electricity price in USD/kWh."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default: GREENPROF_DB, "
                                     "\\[tool.greenprof] db, ./greenprof.db)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """The model-size ladder: measure, fit J/token = a x params^b, extrapolate the seed shapes.

    Measures the models (reusing stored runs of the same model, precision, machine and settings unless --fresh), fits J per generated token against parameters on a log-log scale per precision with the exponent's 95% interval, predicts Phi-3-mini, Llama-2-7B, Mistral-NeMo-12B and Falcon-40B where they were not measured (labelled extrapolated, with 95% prediction intervals), compares the smallest and largest measured model per token, and puts GPT-4o mini beside them (API price; energy estimated by EcoLogits with the ecologits extra).
    """
    import json

    from greenprof.config import CLI_FLAGS, load_settings

    precisions: list[str] = []
    for p in precision or ["fp32"]:
        precisions.extend(x.strip() for x in p.split(",") if x.strip())
    settings = load_settings({"db": db, "region": region, "intensity_g_per_kwh": intensity, "pue": pue,
                              "price_usd_per_kwh": price_kwh, "threads": threads}, names=CLI_FLAGS)
    req = LadderRequest(models=list(models or []), precisions=precisions, runs=runs, new_tokens=new_tokens,
                        prompt_tokens=prompt_tokens, warmup=warmup, threads=settings.threads, fresh=fresh)
    from rich.console import Console

    from greenprof.cli import _build_progress, _Stopped
    from greenprof.measure import Terminated

    try:
        with _build_progress(Console(stderr=True)) as (on_build, status):
            doc = run_ladder(req, settings=settings, progress=status, build_progress=on_build)
    except KeyboardInterrupt:
        e = _Stopped("interrupted; the run in progress is stored as interrupted")
        e.exit_code = 130
        raise e from None
    except Terminated:
        e = _Stopped("terminated; the run in progress is stored as interrupted")
        e.exit_code = 143
        raise e from None
    if as_json:
        typer.echo(json.dumps(doc, indent=2, allow_nan=False))
        return
    print_ladder(doc)


def register(app: typer.Typer) -> None:
    """Add `ladder` to ``app``."""
    app.command("ladder")(ladder_cmd)


__all__ = ["API_MODELS", "SEED_SHAPES", "SMOLLM_LADDER", "LadderRequest", "api_references", "comparison",
           "default_models", "ecologits_estimate", "extrapolate", "fit_models", "register", "run_ladder",
           "shape_params"]
