"""The main job: measure models token by token, store every run, summarise per model.

``greenprof measure`` and ``greenprof.measure_models`` are thin shells over :func:`measure_models`.
Everything a user can get wrong is checked before the first model is built or the database is
written, so a bad invocation leaves the database as it was.
"""

from __future__ import annotations

import functools
import math
import os
import re
import signal
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from greenprof.errors import GreenprofError, UsageError

DEFAULT_MODELS = ("smollm-135m", "smollm-360m")


class Terminated(BaseException):
    """SIGTERM arrived mid-run: unwinds like Ctrl-C so the run is stored as interrupted."""


@dataclass
class MeasureRequest:
    models: Sequence[str] = DEFAULT_MODELS
    #: built-in models only (fp32, int8, int4; any case); None = fp32. An export runs at its own
    #: precision, so giving one with an export is refused.
    precision: str | None = None
    prompt: str | None = None
    prompt_tokens: int | None = None
    new_tokens: int = 64
    batch: int = 1
    runs: int = 3
    warmup: int = 1
    threads: int | None = None
    #: onnxruntime worker threads busy-wait between ops (faster on few cores; the busy-waiting is
    #: CPU time, so the estimate and RAPL count it). Off by default while measuring.
    spinning: bool = False
    graph_opt: str = "all"  # a key of greenprof.models.loader.GRAPH_OPT_LEVELS
    idle_s: float = 0.0
    sample_hz: float = 10.0
    #: None or "auto": the domains of the device the model runs on (see collectors_for_device);
    #: else a comma-separated string or list of domain names, used as given
    collectors: Any = None
    #: onnxruntime execution provider: "cpu", "cuda" or "cuda:N"
    provider: str = "cpu"
    #: the model name stored with the runs (one model only); default: the built-in name, or the
    #: export's folder name
    name: str | None = None


@dataclass
class ModelSummary:
    """One model's runs summarised. Per-token figures are on ``basis`` (attributed unless the
    runs have no attributed energy), J per generated token is decode energy only, J per request
    covers every phase (setup + prefill + decode + teardown)."""

    model: str
    precision: str
    params: int | None
    runs: int
    tokens_per_s: float
    j_per_token: float
    j_per_token_ci95: list[float] | None  # None with one run
    j_per_prompt_token: float | None
    j_per_request: float
    co2e_g_per_1k_tokens: float
    co2e_g_per_request: float
    usd_per_m_tokens: float
    usd_per_m_prompt_tokens: float | None
    usd_per_request: float
    method: str
    basis: str
    domains: list[str]
    run_ids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: decode J per token above the idle baseline, gross (None without --idle-s), and its 95%
    #: interval over the runs (Student's t: it can be negative, see ``notes``)
    dynamic_j_per_token: float | None = None
    dynamic_j_per_token_ci95: list[float] | None = None
    #: runs with a domain lost mid-run (their energy is partial) or a possibly missed wrap
    partial_run_ids: list[int] = field(default_factory=list)
    uncertain_run_ids: list[int] = field(default_factory=list)
    gross_j_per_token: float | None = None
    provider: str = "CPUExecutionProvider"
    threads: int | None = None

    def to_dict(self) -> dict:
        from greenprof.accounting import clean_json

        return clean_json(dict(self.__dict__))


#: More intra-op threads than any machine gives one process (onnxruntime takes a C int).
MAX_THREADS = 4096


def check_request(req: MeasureRequest) -> None:
    """Reject bad numbers before anything is built or written."""
    def positive_int(name: str, v: Any, allow_zero: bool = False) -> None:
        ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
        if not ok:
            raise UsageError(f"{name} must be a whole number {'>= 0' if allow_zero else '> 0'} (got {v!r})")

    positive_int("--new-tokens", req.new_tokens)
    positive_int("--batch", req.batch)
    positive_int("--runs", req.runs)
    positive_int("--warmup", req.warmup, allow_zero=True)
    if req.prompt_tokens is not None:
        positive_int("--prompt-tokens", req.prompt_tokens)
    if req.threads is not None:
        positive_int("--threads", req.threads)
        if req.threads > MAX_THREADS:
            raise UsageError(f"--threads {req.threads} is more than {MAX_THREADS} intra-op threads; use at most "
                             "the CPUs this process may use (the default)")
    if req.precision is not None and (not isinstance(req.precision, str) or not req.precision.strip()):
        raise UsageError(f"--precision must be fp32, int8 or int4 (got {req.precision!r})")
    if req.name is not None:
        if not isinstance(req.name, str) or not req.name.strip():
            raise UsageError(f"--name must be a non-empty name (got {req.name!r})")
        if len(req.models) != 1:
            raise UsageError(f"--name names one model, and {len(req.models)} were given: measure them "
                             "one at a time to name each")
    if req.prompt is not None and req.prompt_tokens is not None:
        raise UsageError("give either a text prompt (--prompt/--prompt-file) or --prompt-tokens, not both")
    if req.prompt is not None and not req.prompt.strip():
        raise UsageError("the prompt is empty: give some text, or --prompt-tokens N for a synthetic prompt")
    if not (math.isfinite(req.idle_s) and req.idle_s >= 0):
        raise UsageError(f"--idle-s must be a number of seconds >= 0 (got {req.idle_s!r})")
    if not req.models:
        raise UsageError("no model given")
    if not isinstance(req.provider, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", req.provider.strip().lower()):
        raise UsageError(f"--provider must be cpu, cuda or cuda:N (got {req.provider!r})")
    from greenprof.models.loader import GRAPH_OPT_LEVELS

    if req.graph_opt not in GRAPH_OPT_LEVELS:
        raise UsageError(f"--graph-opt must be one of {', '.join(GRAPH_OPT_LEVELS)} (got {req.graph_opt!r})")


@dataclass
class ResolvedModel:
    label: str  # what the user typed
    name: str  # model name stored in the run row
    path: Path
    shape: str | None
    params: int | None
    file_hash: str | None
    builtin: bool


@dataclass
class ModelPlan:
    """One MODEL argument, checked before anything is built, loaded or written."""

    spec: str  # what the user typed
    name: str  # the model name stored with its runs
    builtin: bool
    precision: str | None  # built-in: the canonical precision; an export: None (its own)
    context_length: int | None
    shape: Any = None  # built-in: the ModelShape
    path: Path | None = None  # an export: the path given
    check: Any = None  # an export: greenprof.models.loader.ModelCheck


def check_model_spec(spec: str):
    """What a MODEL argument names, checked without building or loading anything: the built-in
    shape (``ModelShape``) or the existing path (``Path``). UsageError otherwise."""
    from greenprof.models import shapes

    p = Path(spec).expanduser()
    if os.sep in spec or spec.endswith(".onnx") or p.exists():
        if not p.exists():
            raise UsageError(f"model path {spec} does not exist: give a built-in name or an existing ONNX file/folder")
        return p
    try:
        return shapes.get_shape(spec)
    except UsageError:
        raise UsageError(f"unknown model {spec!r}: give a built-in name "
                         f"({', '.join(shapes.known_names())}) or a path to an ONNX export") from None


def export_name(check: Any) -> str:
    """The default name of a user model: the name of the folder its ONNX file is in (what the
    user called the export), the same whether the folder or the file was given."""
    return check.folder.resolve().name or str(check.folder)


def plan_model(spec: str, req: MeasureRequest) -> ModelPlan:
    """Everything about one MODEL that can be checked before the first model is built: the name
    or path, an export's files and inputs (no onnxruntime), the precision flag, the tokenizer a
    text prompt needs, and the context length against prompt + new tokens."""
    from greenprof.models import builder, loader

    target = check_model_spec(spec)
    # the prompt's length as far as it is known before a tokenizer is loaded (a text prompt: 1)
    n_prompt = req.prompt_tokens or (128 if req.prompt is None else 1)
    if isinstance(target, Path):
        if req.precision is not None:
            raise UsageError(f"--precision applies to built-in models; {spec} is an export and runs at its "
                             "own precision: drop --precision")
        chk = loader.check(target)
        if req.prompt is not None and not chk.has_tokenizer:
            from greenprof.models.errors import TokenizerMissing

            raise TokenizerMissing(
                f"a text prompt was given but {chk.folder} has no tokenizer.json: put the model's "
                "tokenizer.json beside the .onnx file, or use --prompt-tokens N for a synthetic prompt")
        plan = ModelPlan(spec, (req.name or export_name(chk)).strip(), False, None, chk.context_length,
                         path=target, check=chk)
    else:
        try:
            precision = builder.check_precision(req.precision or "fp32")
        except UsageError as e:
            raise UsageError(f"--precision: {e}") from None
        plan = ModelPlan(spec, (req.name or target.name).strip(), True, precision, target.max_position,
                         shape=target)
        # a model (or a batch) this machine cannot hold is refused before any model is measured;
        # batch 1 with the figure `models list` and the build give (a KV cache of 2048 tokens)
        builder.check_memory(target, precision)
        if req.batch > 1:
            builder.check_memory(target, precision, batch=req.batch,
                                 tokens=min(n_prompt + req.new_tokens, target.max_position))
    if plan.context_length:
        if n_prompt + req.new_tokens > plan.context_length:
            prompt = (f"a {n_prompt}-token prompt" if req.prompt is None else "the prompt")
            raise UsageError(
                f"--new-tokens {req.new_tokens} after {prompt} exceeds the context length of {spec} "
                f"({plan.context_length} tokens): generate fewer tokens or use a shorter prompt")
    return plan


def resolve_model(spec: str | ModelPlan, precision: str | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> ResolvedModel:
    """A built-in name (built on first use) or a path to a user model."""
    from greenprof.models import builder

    plan = spec if isinstance(spec, ModelPlan) else plan_model(spec, MeasureRequest(models=[spec],
                                                                                     precision=precision))
    if not plan.builtin:
        assert plan.path is not None
        return ResolvedModel(plan.spec, plan.name, plan.path, None, None, None, False)
    cb = (lambda done, total: progress(plan.spec, done, total)) if progress else None
    folder = builder.build(plan.shape.name, plan.precision, progress=cb)
    meta = builder.read_metadata(folder)
    return ResolvedModel(plan.spec, plan.name, folder, plan.shape.name, meta.get("param_count"),
                         meta.get("model_sha256"), True)


def _check_collectors(spec: Any) -> None:
    """Refuse energy domains that cannot be used here (--collectors), before any model is built."""
    from greenprof import collectors as col

    names = [n for n in ([x.strip() for x in spec.split(",")] if isinstance(spec, str) else spec)
             if isinstance(n, str) and n]
    if not names:
        raise UsageError(f"--collectors names no energy domain (got {spec!r}): give domain names such as "
                         "cpu-package-0,gpu-0 (see `greenprof sensors`), or leave it out for auto")
    try:
        chosen = col.select(names)
    except UsageError as e:
        raise UsageError(f"--collectors: {e}") from None
    for c in chosen:
        try:
            c.close()
        except Exception:
            pass


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """onnxruntime's own choice of intra-op threads, made explicit so it can be stored: one per
    physical core, counted among the CPUs this process may use (hyper-thread siblings once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = []
    cores = set()
    for c in cpus:
        try:
            sib = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip()
        except OSError:
            cores = set()
            break
        cores.add(sib)
    if cores:
        return len(cores)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:
        physical = None
    return max(1, min(physical or usable_cpus(), usable_cpus()))


class _LazyStore:
    """Opens the store on first use."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._store = None

    def __getattr__(self, name: str) -> Any:
        if self._store is None:
            self._store = self._opener()
        return getattr(self._store, name)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _install_sigterm(state: dict[str, Any]) -> Callable[[], None]:
    """SIGTERM -> Terminated (a BaseException), so runs unwind and are stored as interrupted;
    Ctrl-C (SIGINT) -> KeyboardInterrupt, as Python's own handler does, under the same rules.

    The handler records the signal in ``state["stop"]`` and raises at once, except while
    ``state["hold"]`` is set: a run's rows are being written (its start, its end), and an
    exception there would leave the run ``running`` with no energy while the message says it was
    stored as interrupted. Held, the signal is raised by the next :func:`_check_terminated`
    (before the next run, per warm-up token, after the last run). The check also catches a signal
    whose exception Python dropped: a handler runs at whatever line the main thread is on, and
    where that is a ``__del__`` or a GC callback the exception is printed as "Exception ignored"
    and lost."""
    if not hasattr(signal, "SIGTERM"):
        return lambda: None
    kinds = {signal.SIGTERM: Terminated, signal.SIGINT: KeyboardInterrupt}
    old: dict[int, Any] = {}

    def handler(signum, frame):  # noqa: ARG001
        exc = kinds[signum]
        state.setdefault("stop", exc)
        if not state.get("hold"):
            raise exc()

    try:
        for sig in kinds:
            before = signal.getsignal(sig)
            if sig == signal.SIGINT and before is not signal.default_int_handler:
                continue  # ignored (a background job) or the program's own: left as it is
            old[sig] = before
            signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        return lambda: None
    import sys

    hook = sys.unraisablehook

    def quiet(u: Any) -> None:
        # the handler's exception raised in a __del__ or GC callback: Python would print it with
        # a traceback and drop it; it is raised again by the next check, so say nothing here
        if u.exc_type in kinds.values() and state.get("stop") is u.exc_type:
            return
        hook(u)

    sys.unraisablehook = quiet

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)
        if sys.unraisablehook is quiet:
            sys.unraisablehook = hook

    return restore


def _check_terminated(state: dict[str, Any], *_: Any) -> None:
    """Raise the SIGTERM (Terminated) or Ctrl-C (KeyboardInterrupt) that arrived while a run was
    being written, or whose exception was dropped (see _install_sigterm)."""
    exc = state.get("stop")
    if exc is not None:
        raise exc()


def measure_models(req: MeasureRequest, *, settings=None, store=None,
                   progress: Callable[[str], None] | None = None,
                   build_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the measurement and return the JSON-ready document (``runs`` and ``summary``).

    Everything that can be checked is checked before the first model is built: the numbers,
    every MODEL (names, an export's files and inputs), precision, context length, the grid
    region, and the database (a SQLite location is probed for writing, a server connected to).
    When a model fails later anyway, or the job is interrupted, the exception carries
    ``partial_doc`` (this document for the models that completed; their runs are stored) and
    ``interrupted_run_id`` (the run stored as interrupted, None when none was in progress).
    """
    from greenprof import carbon
    from greenprof.config import load_settings, resolve_intensity

    say = progress or (lambda msg: None)
    check_request(req)
    settings = settings or load_settings()
    grid, note = resolve_intensity(settings)
    pue = settings.pue
    price = settings.price_usd_per_kwh
    if price is None:
        price = carbon.DEFAULT_PRICE_USD_PER_KWH
    carbon.check_pue(pue)
    carbon.check_price(price)
    threads = req.threads if req.threads is not None else settings.threads
    threads_name = "--threads" if req.threads is not None else settings.describe("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0
                                or threads > MAX_THREADS):
        raise UsageError(f"{threads_name} must be a whole number from 1 to {MAX_THREADS} (got {threads!r})")
    # every model is checked (names, paths, files, context) before anything is built or written
    plans = [plan_model(spec, req) for spec in req.models]
    if req.collectors not in (None, "auto") and isinstance(req.collectors, (str, list, tuple)):
        _check_collectors(req.collectors)
    notes = [note] if note else []
    own_store = store is None
    if own_store:
        # refuse a bad --db now (unwritable, unreachable, in memory), but create/migrate the
        # database only once a model has loaded, so a bad model leaves it exactly as it was
        from greenprof.store import open_store, preflight

        db_setting = ("--db" if settings.origin.get("db") == "flag" and "db" not in settings.names
                      else settings.describe("db"))
        preflight(settings.db, setting=db_setting, keep=True)
        store = _LazyStore(lambda: open_store(settings.db, setting=db_setting))
    thread_warning = None
    if threads is None:
        threads = default_threads()
    elif threads > usable_cpus():
        thread_warning = (f"{threads_name} {threads} is more than the {usable_cpus()} CPUs this process may "
                          "use (os.sched_getaffinity): the threads take turns on them, so speed and J/token "
                          "are not what the model does with its own cores")
        say(f"warning: {thread_warning}")
        notes.append(thread_warning)
    state: dict[str, Any] = {"run_id": None}
    restore_sigterm = _install_sigterm(state)
    doc_runs: list[dict] = []
    summaries: list[ModelSummary] = []

    def document() -> dict:
        return {
            "runs": doc_runs,
            "summary": [s.to_dict() for s in summaries],
            "grid": {"region": grid.region, "name": grid.name, "intensity_g_per_kwh": grid.intensity_g_per_kwh,
                     "source": grid.source, "year": grid.year},
            "pue": pue,
            "price_usd_per_kwh": price,
            "notes": list(notes),
        }

    try:
        for plan in plans:
            summaries.append(_measure_one(plan, req, store, grid, pue, price, threads, say,
                                          build_progress, doc_runs, thread_warning, state))
    except BaseException as e:
        e.partial_doc = document()  # type: ignore[attr-defined]
        e.interrupted_run_id = state["run_id"]  # type: ignore[attr-defined]
        e.stage = state.get("stage")  # type: ignore[attr-defined]
        raise
    finally:
        restore_sigterm()
        if own_store:
            store.close()
    return document()


def _start_meter(collectors: Any, auto: bool, vanished: dict[str, str], device: str, device_id: int,
                 req: Any) -> tuple[Any, Any]:
    """Start a run's Meter on ``collectors``; with the device's default domains (``auto``), a
    domain that has disappeared since they were chosen (a zone gone between runs) is left out
    and noted in ``vanished``, instead of failing the whole measure as if the user had named a
    domain this machine lacks. Returns (the running meter, the collectors it uses)."""
    from greenprof.errors import SensorUnavailable
    from greenprof.meter import Meter

    meter = Meter(collectors=collectors, sample_hz=req.sample_hz, idle_s=req.idle_s)
    try:
        meter.start()
        return meter, collectors
    except (UsageError, SensorUnavailable) as e:
        if not auto or not isinstance(collectors, list):
            raise
        fresh = collectors_for_device(device, device_id)
        gone = [d for d in collectors if d not in fresh]
        if not gone:
            raise
        why = str(e).split(" (available here")[0]
        for d in gone:
            vanished[d] = f"gone since the model's domains were chosen: {why}"
    meter = Meter(collectors=fresh, sample_hz=req.sample_hz, idle_s=req.idle_s)
    meter.start()
    return meter, fresh


def _part_of(domain: str) -> str:
    """The hardware a domain counts: "the CPU" (RAPL package, DRAM, psys, the CPU estimate, and a
    replayed one of those) or the GPU domain itself."""
    base = domain.split(":", 1)[1] if domain.startswith("replay:") else domain
    if base == "cpu" or base.startswith(("cpu-", "dram", "psys")):
        return "the CPU"
    return base


def uncounted_parts(default_domains: "list[str]", domains: "list[str]") -> list[str]:
    """What a run on the model's device is charged by default (``default_domains``, from
    :func:`collectors_for_device`) that the chosen ``domains`` count nothing of: "the CPU" when
    none of them is a CPU domain, and the model's GPU when it is not among them."""
    have = {_part_of(d) for d in domains}
    return list(dict.fromkeys(p for p in map(_part_of, default_domains) if p not in have))


def collectors_for_device(device: str, device_id: int = 0, **discover_kwargs) -> list[str]:
    """The domain names a run on ``device`` is charged (greenprof.collectors.select_for_device):
    a CPU run its CPU domains and no GPU; a CUDA run its own GPU plus the host CPU."""
    from greenprof.collectors import select_for_device

    chosen = select_for_device(device, device_id, **discover_kwargs)
    for c in chosen:  # names only: the meter opens its own
        try:
            c.close()
        except Exception:
            pass
    return [c.domain for c in chosen]


def run_figures_of(m: Any, gen: Any, batch: int, grid: Any, pue: float, price: float):
    """(Attribution, RunFigures) of one measured generation, from greenprof.accounting."""
    from greenprof import accounting

    att = accounting.attribute(m, gen.prompt_tokens, gen.new_tokens, batch=batch)
    fig = accounting.run_figures(att.phase_energy_j, basis=att.basis, phases_marked=True,
                                 prompt_tokens=gen.prompt_tokens * batch,
                                 generated_tokens=gen.new_tokens * batch, requests=batch,
                                 intensity_g_per_kwh=grid.intensity_g_per_kwh, pue=pue,
                                 price_usd_per_kwh=price)
    return att, fig


def _measure_one(plan, req, store, grid, pue, price, threads, say, build_progress, doc_runs,
                 thread_warning=None, state=None) -> ModelSummary:
    from greenprof import accounting
    from greenprof.models.inspect import count_params
    from greenprof.models.loader import load
    from greenprof.models.runner import generate

    import uuid

    state = state if state is not None else {}
    spec = plan.spec
    batch_id = str(uuid.uuid4())  # groups this model's repeated runs
    state["stage"] = f"preparing {spec}"
    if plan.builtin:
        say(f"{spec}: preparing {plan.precision} model")
    else:
        say(f"{spec}: loading the export (its own precision)")
    rm = resolve_model(plan, progress=build_progress)
    model = load(rm.path, threads=threads, spinning=req.spinning, graph_opt=req.graph_opt,
                 providers=req.provider)
    meta = getattr(model, "metadata", None) or {}
    counted = None
    if not (rm.params or meta.get("param_count")) or not rm.builtin:
        try:  # an export: its parameters and precision from its ONNX initializers
            counted = count_params(rm.path)
        except Exception:
            counted = None
    params = rm.params or meta.get("param_count") or (counted.total if counted and counted.total else None)
    precision = plan.precision if rm.builtin else (meta.get("precision") or (counted.precision if counted else None)
                                                   or "unknown")
    provider = getattr(model, "provider", "CPUExecutionProvider")
    device = getattr(model, "device", "cpu")
    device_id = getattr(model, "device_id", 0)
    auto_collectors = req.collectors in (None, "auto")
    if auto_collectors:
        collectors: Any = collectors_for_device(device, device_id)
        collectors_label = f"{device} (auto)"
    else:
        collectors = req.collectors
        collectors_label = collectors if isinstance(collectors, str) else ",".join(map(str, collectors))
    vanished: dict[str, str] = {}  # default domains that disappeared between runs: why
    # chosen collectors that count none of the CPU, or not the model's own GPU, which a run on its
    # device is charged by default (a CPU model measured on gpu-0 alone: about 0 J, its CPU
    # energy counted nowhere) say so on every run
    default_domains: list[str] = []
    if not auto_collectors:
        try:
            default_domains = collectors_for_device(device, device_id)
        except Exception:  # no default to compare with: nothing to say
            default_domains = []
    if rm.file_hash is None:
        try:
            from greenprof.models.builder import file_hash

            onnx_file = rm.path if rm.path.is_file() else Path(getattr(model, "path", rm.path))
            rm.file_hash = file_hash(onnx_file) if Path(onnx_file).is_file() else None
        except Exception:
            rm.file_hash = None
    if req.prompt is not None:
        if model.tokenizer is None:
            from greenprof.models.errors import TokenizerMissing

            raise TokenizerMissing(
                f"a text prompt was given but {rm.path} has no tokenizer.json: put the model's "
                "tokenizer.json beside the .onnx file, or use --prompt-tokens N for a synthetic prompt")
        n_prompt = len(model.tokenizer.encode(req.prompt).ids)
        ctx = model.context_length
        if ctx is not None and n_prompt + req.new_tokens > ctx:  # before any warm-up or run
            raise UsageError(f"the prompt ({n_prompt} tokens of {spec}'s tokenizer) + --new-tokens "
                             f"{req.new_tokens} exceeds its context length ({ctx} tokens): shorten "
                             "--prompt/--prompt-file or generate fewer tokens")
        gen_kw: dict[str, Any] = dict(prompt=req.prompt, new_tokens=req.new_tokens, batch=req.batch)
    else:
        n_prompt = req.prompt_tokens or 128
        gen_kw = dict(prompt_tokens=n_prompt, new_tokens=req.new_tokens, batch=req.batch)
    if req.warmup == 0:
        # The first call of a fresh onnxruntime session allocates and initialises (~0.6 s on a
        # small model): in a measured run it would be most of the run's energy. One short,
        # unstored call keeps it out (the warm-up setting, 0, is still stored with the runs).
        state["stage"] = f"the first call of {spec}"
        say(f"{spec}: first call of the new session (1 token, not measured)")
        generate(model, **{**gen_kw, "new_tokens": 1})
    stop_check = functools.partial(_check_terminated, state)  # per token in the warm-up: never measured
    for w in range(req.warmup):
        state["stage"] = f"the warm-up of {spec}"
        stop_check()
        say(f"{spec}: warm-up {w + 1}/{req.warmup}")
        generate(model, on_token=stop_check, **gen_kw)
    per_token, per_token_gross, per_prompt, per_request, tps, methods = [], [], [], [], [], {}
    run_ids, notes, bases, domains = [], [], set(), {}
    partial, uncertain = [], []
    per_token_dynamic: list[float] = []
    session = {"spinning": req.spinning, "graph_opt": req.graph_opt, "warmup": req.warmup}
    for r in range(req.runs):
        state["stage"] = f"run {r + 1}/{req.runs} of {spec}"
        state["hold"] = False
        stop_check()
        say(f"{spec}: run {r + 1}/{req.runs} ({req.new_tokens} new token{'' if req.new_tokens == 1 else 's'})")
        state["hold"] = True  # a signal while the run's row is inserted waits for state["run_id"]
        run_id = store.start_run(
            kind="measure", model_name=rm.name, model_shape=rm.shape, param_count=params,
            precision=precision, model_file_hash=rm.file_hash, provider=provider, threads=threads,
            prompt_tokens=n_prompt, new_tokens=req.new_tokens, region=grid.region,
            intensity_g_per_kwh=grid.intensity_g_per_kwh, intensity_source=grid.source,
            intensity_year=grid.year, pue=pue, price_usd_per_kwh=price, batch_id=batch_id,
            batch_size=req.batch, collectors=collectors_label[:255],
            extra={"session": session},
        )
        state["run_id"] = run_id
        meter = None
        gen = None
        try:
            state["hold"] = False
            stop_check()  # a signal held while the run was started: it is stored as interrupted
            meter, collectors = _start_meter(collectors, auto_collectors, vanished, device, device_id, req)
            try:
                gen = generate(model, meter=meter, **gen_kw)
                state["hold"] = True  # from here to the end of this run, a signal waits (see _install_sigterm)
            except BaseException as e:
                meter.__exit__(type(e), e, e.__traceback__)
                raise
            meter.__exit__(None, None, None)
        except BaseException as e:
            state["hold"] = True
            status = "interrupted" if isinstance(e, (KeyboardInterrupt, Terminated)) else "failed"
            try:
                m = meter.measurement if meter is not None else None  # what was measured until then
            except UsageError:
                m = None  # the meter never started
            if m is not None and thread_warning:
                m.warnings.append(thread_warning)
            # store the tokens generated (one marked segment each), the request beside them
            done = accounting.generated_tokens(m.segments) if m is not None else 0
            if done != req.new_tokens:
                store.update_run(run_id, new_tokens=done,
                                 extra={"session": session, "requested_new_tokens": req.new_tokens})
            store.finish_run(run_id, m, status=status,
                             error=None if status == "interrupted" else f"{type(e).__name__}: {e}")
            raise
        m = meter.measurement
        if thread_warning:
            m.warnings.append(thread_warning)
        for d, why in vanished.items():  # a default domain gone since an earlier run: this run lacks it
            if d not in m.domains:
                m.lost.setdefault(d, why)
                m.warnings.append(f"{d} lost ({why}); this run is measured without it and marked partial")
        left_out = uncounted_parts(default_domains, m.domains)
        if left_out:
            m.warnings.append(f"the model runs on {device} but the collectors chosen ({collectors_label}) count no "
                              f"energy of {' or '.join(left_out)}, which a run on {device} is charged by default: "
                              "it is not in these figures (use the default collectors, or add it)")
        # tokens per segment across the whole batch: the prompt of every row, one token per row
        tokens = {s.label: (gen.prompt_tokens if s.label == "prefill" else 1) * req.batch
                  for s in m.segments if s.label == "prefill" or s.label.startswith("token-")}
        store.finish_run(run_id, m, tokens=tokens)
        state["run_id"] = None
        att, fig = run_figures_of(m, gen, req.batch, grid, pue, price)
        gross_att = accounting.attribute(m, gen.prompt_tokens, gen.new_tokens, batch=req.batch, basis="gross")
        per_token.append(fig.j_per_token)
        per_token_gross.append(gross_att.j_per_token)
        if m.idle_power_w:
            per_token_dynamic.append(sum(gross_att.decode_dynamic_j_per_token.values()))
        per_prompt.append(fig.j_per_prompt_token)
        per_request.append(fig.j_per_request)
        tps.append(att.decode_tokens_per_s)
        methods.update(m.method)
        bases.add(fig.basis)
        domains.update(dict.fromkeys(m.domains))
        run_ids.append(run_id)
        if m.lost:
            partial.append(run_id)
        if m.uncertain:
            uncertain.append(run_id)
        for n in list(att.notes) + list(m.warnings):
            if n not in notes:
                notes.append(n)
        if m.other_cpu_share is not None and m.other_cpu_share > 0.10:
            say(f"{spec}: run {r + 1}: other processes used {m.other_cpu_share:.0%} of the machine's busy "
                "CPU time (stored on the run)")
        doc_runs.append(accounting.clean_json({
            "id": run_id, "model": rm.name, "precision": precision, "provider": provider,
            "duration_s": m.duration_s, "domains": m.domains, "collectors": collectors_label,
            "energy_j": fig.energy_j, "gross_energy_j": m.total_energy_j,
            "energy_j_by_domain": m.attributed_energy_j, "gross_energy_j_by_domain": m.energy_j,
            "share": m.share, "scope": m.scope, "phase_energy_j": fig.phase_energy_j, "basis": fig.basis,
            "prefill_energy_j": fig.phase_energy_j["prefill"],
            "decode_energy_j": fig.phase_energy_j["decode"],
            "prompt_tokens": gen.prompt_tokens, "new_tokens": gen.new_tokens, "batch_size": req.batch,
            "method": accounting.collapse_methods(m.method), "methods": m.method,
            "j_per_token": fig.j_per_token, "j_per_prompt_token": fig.j_per_prompt_token,
            "j_per_request": fig.j_per_request, "co2e_g": fig.co2e_g, "cost_usd": fig.cost_usd,
            "tokens_per_s": att.decode_tokens_per_s,
            "dynamic_j_per_token": per_token_dynamic[-1] if m.idle_power_w else None,
            "idle_power_w": m.idle_power_w, "uncertain": m.uncertain, "lost": m.lost,
            "share_notes": m.share_notes, "other_cpu_share": m.other_cpu_share,
            "process_cpu_s": m.process_cpu_s, "machine_busy_cpu_s": m.machine_busy_cpu_s,
            "warnings": m.warnings,
        }))
    state["hold"] = False
    stop_check()  # a signal held while the last run was written: every run is stored
    iv = accounting.interval95(per_token)
    j_prompt_mean = statistics.fmean(per_prompt) if all(v is not None for v in per_prompt) else None
    j_req = statistics.fmean(per_request)
    basis = bases.pop() if len(bases) == 1 else "mixed"
    if partial:
        notes.append(f"{rm.name}: run(s) {', '.join(map(str, partial))} lost a domain mid-run: their energy is "
                     "partial, and the mean above includes them (see `greenprof show RUN_ID`)")
    if uncertain:
        notes.append(f"{rm.name}: run(s) {', '.join(map(str, uncertain))} are uncertain (a counter may have "
                     "missed a wrap, or did not update within the run): see `greenprof show RUN_ID`")
    dyn_mean, dyn_ci, dyn_note = dynamic_summary(per_token_dynamic)
    if dyn_note:
        notes.append(f"{rm.name}: {dyn_note}")
    return ModelSummary(
        model=rm.name, precision=precision, params=params, runs=req.runs,
        tokens_per_s=statistics.fmean(tps), j_per_token=iv.mean, j_per_token_ci95=iv.as_list(),
        j_per_prompt_token=j_prompt_mean, j_per_request=j_req,
        co2e_g_per_1k_tokens=accounting.co2e_g_per_1k_tokens(iv.mean, grid.intensity_g_per_kwh, pue),
        co2e_g_per_request=accounting.co2e_g(j_req, grid.intensity_g_per_kwh, pue),
        usd_per_m_tokens=accounting.usd_per_m_tokens(iv.mean, price, pue),
        usd_per_m_prompt_tokens=(accounting.usd_per_m_tokens(j_prompt_mean, price, pue)
                                 if j_prompt_mean is not None else None),
        usd_per_request=accounting.cost_usd(j_req, price, pue),
        method=accounting.collapse_methods(methods), basis=basis, domains=list(domains),
        run_ids=run_ids, notes=notes,
        dynamic_j_per_token=dyn_mean, dynamic_j_per_token_ci95=dyn_ci,
        partial_run_ids=partial, uncertain_run_ids=uncertain,
        gross_j_per_token=statistics.fmean(per_token_gross), provider=provider, threads=threads,
    )


def dynamic_summary(values: Sequence[float]) -> tuple[float | None, list[float] | None, str | None]:
    """(mean, 95% interval, note) of the runs' dynamic J per generated token (gross minus the
    idle median x duration). The interval is Student's t where a value is <= 0 (it may then be
    negative); the note says what a figure at or below zero means. (None, None, None) without
    an idle baseline."""
    from greenprof import accounting

    if not values:
        return None, None, None
    iv = accounting.interval95(values)
    ci = iv.as_list()
    if iv.mean < 0 or (ci is not None and ci[0] < 0):
        return iv.mean, ci, dynamic_note(iv.mean, ci)
    return iv.mean, ci, None


def dynamic_note(mean: float, ci95: list[float] | None) -> str:
    """What a dynamic J/token at or below zero means, with its interval."""
    iv = f" [{ci95[0]:.3g}, {ci95[1]:.3g}] (95% CI)" if ci95 else " (one run: no interval)"
    if mean < 0:
        return (f"dynamic J/gen token is {mean:.3g}{iv}: the decode drew less power than the idle "
                "median measured before each run (the idle window is short, or the machine's load changed), "
                "so the work's own energy is not resolved above idle here; use the attributed figures, or a "
                "longer --idle-s")
    return (f"dynamic J/gen token is {mean:.3g}{iv}: the interval reaches below zero, so the "
            "work's own energy is not resolved above the idle median here; use the attributed figures, or "
            "a longer --idle-s")


__all__ = ["MeasureRequest", "ModelSummary", "measure_models", "DEFAULT_MODELS", "Terminated",
           "GreenprofError", "collectors_for_device"]
