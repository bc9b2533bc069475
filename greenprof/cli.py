"""`greenprof` command line. Data goes to stdout, progress and errors to stderr.

A user mistake prints one line (no traceback) and exits 2; a runtime failure exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from greenprof import __version__
from greenprof.errors import GreenprofError, UsageError

app = typer.Typer(
    name="greenprof",
    help="Energy and carbon accounting for LLM inference: joules, grams of CO2e and cents per token.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"greenprof {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Energy and carbon accounting for LLM inference.

    Energy comes from RAPL (Linux powercap) and NVML where the machine has them, else from a
    clearly labelled estimate (this process's CPU time x the power of a busy thread: a share of
    the TDP on bare metal, a published per-vCPU figure in a VM). Run `greenprof sensors`
    to see which applies here.
    """


@app.command()
def sensors(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """List every energy source greenprof knows: domain, method, and why not (with the fix).

    The default set (what `Meter()` and `greenprof measure` use) is marked. Every measured
    counter is read twice, about 0.3 s apart: its power now, or a warning when it did not move
    (it may not count on this machine). Exits 0 even when only the CPU estimate is available.
    """
    from greenprof.collectors import discover_all

    found = discover_all()
    try:
        power = found.check_moving()
    finally:
        found.close()
    default = [s.domain for s in found.statuses if s.available and s.in_default_set]
    measured = [s.domain for s in found.statuses
                if s.available and s.in_default_set and s.method == "measured"]
    still = [d for d, w in power.items() if w == 0.0]
    for d in still:
        sys.stderr.write(f"greenprof sensors: {d}'s counter did not move in the check: it may not count on this "
                         "machine, and would read 0 J (flagged uncertain); leave it out with --collectors / "
                         "collectors=\n")
    # RAPL in the default set keeps the CPU estimate out of it: not when none of its CPU counters moves
    from greenprof.collectors import _is_cpu_domain

    cpu_measured = [d for d in measured if _is_cpu_domain(d)]
    notes = []
    if cpu_measured and all(d in still for d in cpu_measured):
        notes.append(f"none of the measured CPU counters ({', '.join(cpu_measured)}) moved in the check: RAPL "
                     "may not count on this machine (some hypervisors expose it this way), and the CPU "
                     "estimate is left out of the default set because RAPL is there; measure with "
                     "--collectors cpu-estimate / collectors=[\"cpu-estimate\"] instead")
        sys.stderr.write(f"greenprof sensors: {notes[-1]}\n")
    if as_json:
        doc = {
            "greenprof_version": __version__,
            "sensors": [{**s.to_dict(), "power_w": power.get(s.domain),
                         "moving": None if power.get(s.domain) is None else power[s.domain] > 0}
                        for s in found.statuses],
            "default_set": default,
            "estimate_only": not measured,
            "notes": notes,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Energy sensors", title_justify="left")
    for col in ("source", "domain", "method", "status", "detail / why not"):
        table.add_column(col, overflow="fold")
    for s in found.statuses:
        if s.available:
            state = "[green]in use[/green]" if s.in_default_set else "[yellow]available[/yellow]"
        else:
            state = "[red]unavailable[/red]"
        note = s.detail
        w = power.get(s.domain)
        if w is not None:
            note = (f"{note}\n[red]did not move in the check: may not count here[/red]" if w == 0.0
                    else f"{note}\nreads {w:.3g} W now")
        why = s.why_not
        if notes and s.domain == "cpu-estimate":  # "RAPL measures the CPU here" is not so
            why = "RAPL is in the default set, but none of its CPU counters moved: use --collectors cpu-estimate"
        if why:
            note = f"{note}\n{why}" if note else why
        table.add_row(s.source, s.domain, s.method, state, note)
    out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 1000)  # piped: never wrapped
    out.print(table)
    if not measured:
        Console(stderr=True, soft_wrap=True).print(
            "[yellow]No energy sensor is readable here: figures will be labelled 'estimated'.[/yellow]"
        )


@app.command()
def measure(
    models: list[str] = typer.Argument(None, metavar="MODEL",
                                       help="Built-in names (built on first use) or paths to ONNX exports. "
                                            "Default: smollm-135m smollm-360m."),
    precision: str = typer.Option(None, "--precision", metavar="P",
                                  help="fp32, int8 or int4, for built-in models (default fp32). An export runs "
                                       "at its own precision."),
    name: str = typer.Option(None, "--name", metavar="NAME",
                             help="The model name stored with the runs (one MODEL). Default: the built-in "
                                  "name, or the folder the export is in."),
    prompt: str = typer.Option(None, "--prompt", metavar="TEXT", help="Prompt text (needs the model's tokenizer.json)."),
    prompt_file: Path = typer.Option(None, "--prompt-file", metavar="FILE",
                                     help="Read the prompt text from a UTF-8 file."),
    prompt_tokens: int = typer.Option(None, "--prompt-tokens", metavar="N",
                                      help="A synthetic prompt of N tokens (default 128)."),
    new_tokens: int = typer.Option(64, "--new-tokens", metavar="N",
                                   help="Tokens generated per run (fixed length; EOS ignored)."),
    batch: int = typer.Option(1, "--batch", metavar="N",
                              help="Sequences generated together (per-token figures are per sequence token)."),
    runs: int = typer.Option(3, "--runs", metavar="N", help="Measured runs per model, for the mean and 95% CI."),
    warmup: int = typer.Option(1, "--warmup", metavar="N",
                               help="Unmeasured warm-up generations per model. With 0, one 1-token call still "
                                    "initialises the new onnxruntime session, unmeasured."),
    threads: int = typer.Option(None, "--threads", metavar="N",
                                help="onnxruntime intra-op threads (default: config, else one per physical core "
                                     "this process may use; the number used is stored)."),
    spinning: bool = typer.Option(False, "--spinning", help="Let onnxruntime's idle worker threads busy-wait "
                                  "between ops: often faster on few cores, but the busy-waiting is CPU time that "
                                  "the estimate and RAPL count as energy. Off by default."),
    graph_opt: str = typer.Option("all", "--graph-opt", metavar="LEVEL",
                                  help="onnxruntime graph optimisation level: disable, basic, extended, layout "
                                       "or all."),
    idle_s: float = typer.Option(0.0, "--idle-s", metavar="S",
                                 help="Seconds of idle baseline before each run (dynamic = gross - idle)."),
    provider: str = typer.Option("cpu", "--provider", metavar="NAME",
                                 help="onnxruntime execution provider: cpu, cuda or cuda:N."),
    collectors: str = typer.Option(None, "--collectors", metavar="DOMAINS",
                                   help="Energy domains to charge, comma-separated (e.g. "
                                   "cpu-package-0,dram-0 or gpu-0,cpu-estimate; see `greenprof sensors`). Default: "
                                   "the device the model runs on: CPU domains for a CPU run (never an idle GPU), "
                                   "its own GPU plus the host CPU for a CUDA run."),
    region: str = typer.Option(None, "--region", metavar="R",
                               help="Grid region for CO2e: ISO3 (FRA), ISO2, name, or USA/CA."),
    intensity: float = typer.Option(None, "--intensity", metavar="G",
                                    help="Grid intensity in g CO2e/kWh (market-based factor); overrides the "
                                         "region's factor (the region is kept with the runs)."),
    pue: float = typer.Option(None, "--pue", metavar="X", help="Data-centre PUE (default 1.0)."),
    price_kwh: float = typer.Option(None, "--price-kwh", metavar="USD",
                                    help="Electricity price in USD/kWh (default: US commercial average)."),
    db: str = typer.Option(None, "--db", metavar="URL",
                           help="SQLAlchemy URL or SQLite path (default: GREENPROF_DB, \\[tool.greenprof] db, "
                                "./greenprof.db)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (runs and summary) on stdout."),
) -> None:
    """Measure joules, CO2e and cost per token for one or more models.

    Each model runs WARMUP unmeasured generations, then RUNS measured ones, each stored in the
    database with its segments (prefill and every token) and power timeline. Progress goes to
    stderr; the summary table (or --json) to stdout.
    """
    from greenprof.config import CLI_FLAGS, load_settings
    from greenprof.measure import DEFAULT_MODELS, MeasureRequest, Terminated, measure_models

    if prompt is not None and prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both")
    if prompt_file is not None:
        prompt = _read_prompt_file(prompt_file)
    settings = load_settings({"db": db, "region": region, "intensity_g_per_kwh": intensity, "pue": pue,
                              "price_usd_per_kwh": price_kwh, "threads": threads}, names=CLI_FLAGS)
    req = MeasureRequest(models=models or list(DEFAULT_MODELS), precision=precision, prompt=prompt,
                         prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch, runs=runs, warmup=warmup,
                         threads=settings.threads, spinning=spinning, graph_opt=graph_opt, idle_s=idle_s,
                         sample_hz=settings.sample_hz, provider=provider, collectors=collectors, name=name)
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True, highlight=False)
    import warnings

    from greenprof.meter import GreenprofWarning

    try:
        # a measurement's warnings reach the runs and the notes printed below, each as one line:
        # not also as Python's "file:line: GreenprofWarning: ..." with a source line
        with _build_progress(err) as (on_build, status), warnings.catch_warnings():
            warnings.simplefilter("ignore", GreenprofWarning)
            doc = measure_models(req, settings=settings, progress=status, build_progress=on_build)
    except BaseException as e:
        partial = getattr(e, "partial_doc", None)
        if partial is not None and (partial["summary"] or (as_json and partial["runs"])):
            # what completed first (with --json, every stored run too), then the error
            _print_result(partial, as_json, error=e)
        if isinstance(e, (KeyboardInterrupt, Terminated)):
            raise _stopped(e, partial) from None
        raise
    _print_result(doc, as_json)


def _read_prompt_file(path: Path) -> str:
    try:
        data = path.expanduser().read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read --prompt-file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompt-file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                         f"{e.start}): save it as UTF-8") from None


def _stopped(e: BaseException, partial: dict | None) -> "_Stopped":
    """The one line for Ctrl-C / SIGTERM: which run (if any) is stored as interrupted."""
    from greenprof.measure import Terminated

    what = "terminated" if isinstance(e, Terminated) else "interrupted"
    run_id = getattr(e, "interrupted_run_id", None)
    done = [r["id"] for r in (partial or {}).get("runs", [])]
    kept = f"; runs {done[0]}..{done[-1]} completed and are stored" if done else ""
    if run_id is not None:
        msg = f"{what}; run {run_id}, in progress, is stored as interrupted{kept}"
    else:
        stage = getattr(e, "stage", None)
        msg = (f"{what}{' during ' + stage if stage else ''}; no run was in progress, so none is stored "
               f"as interrupted{kept}")
    out = _Stopped(msg)
    out.exit_code = 143 if isinstance(e, Terminated) else 130
    return out


def _print_result(doc: dict, as_json: bool, error: BaseException | None = None) -> None:
    if as_json:
        from greenprof.accounting import clean_json

        if error is not None:
            # the run in progress is stored as interrupted (its tokens and energy so far): say which
            doc = {**doc, "error": f"{error}" or type(error).__name__, "complete": False,
                   "interrupted_run_id": getattr(error, "interrupted_run_id", None)}
        typer.echo(json.dumps(clean_json(doc), indent=2, allow_nan=False))
        return
    _print_summary(doc)


class _build_progress:
    """A rich progress bar for model builds (started only when a model is built) plus one-line
    status messages, all on stderr."""

    def __init__(self, console) -> None:
        self.console = console
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        def on_build(name: str, done: int, total: int) -> None:
            if not self.console.is_terminal:  # a log, not a screen: one line, no bar to redraw
                if name not in self.tasks:
                    self.tasks[name] = 0
                    status(f"{name}: building (first use; cached afterwards)")
                return
            if self.progress is None:
                from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                         TimeRemainingColumn(), console=self.console, transient=True)
                self.progress.start()
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(f"building {name}", total=total)
            self.progress.update(self.tasks[name], completed=done, total=total)
            if total and done >= total and self.progress.finished:  # built: the bar goes away now
                self.progress.stop()
                self.progress, self.tasks = None, {}

        def status(msg: str) -> None:
            self.console.print(msg, style="dim", markup=False, highlight=False, soft_wrap=True)

        return on_build, status

    def __exit__(self, *exc) -> bool:
        if self.progress is not None:
            self.progress.stop()
        return False


def _print_summary(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from greenprof.accounting import energy_label

    grid = doc["grid"]
    factor = " (market-based factor)" if str(grid.get("source") or "").startswith("user") else ""
    table = Table(title=f"Energy per token ({grid['name']}, {grid['intensity_g_per_kwh']:.4g} g CO2e/kWh{factor}, "
                        f"PUE {doc['pue']:g}, ${doc['price_usd_per_kwh']:g}/kWh)", title_justify="left")
    for col, just in (("model", "left"), ("params", "right"), ("precision", "left"), ("energy", "left"),
                      ("domains", "left"), ("tokens/s", "right"), ("J/prompt token", "right"),
                      ("J/gen token, decode (95% CI)", "right"), ("J/request, all phases", "right"),
                      ("g CO2e/1k gen tokens", "right"), ("$/M gen tokens", "right")):
        table.add_column(col, justify=just)

    def num(x) -> str:
        return "-" if x is None else f"{x:.4g}"

    dynamic = any(s.get("dynamic_j_per_token") is not None for s in doc["summary"])
    if dynamic:
        table.add_column("dynamic J/gen token, gross above idle (95% CI)", justify="right")
    for s in doc["summary"]:
        ci = s["j_per_token_ci95"]
        jt = f"{s['j_per_token']:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else f"{s['j_per_token']:.4g} [n/a]"
        flags = []
        if s.get("partial_run_ids"):
            flags.append("partial")
        if s.get("uncertain_run_ids"):
            flags.append("uncertain")
        label = energy_label(s["method"], s["basis"]) + (f" {', '.join(flags)}" if flags else "")
        row = [s["model"], _human_params(s["params"]), s["precision"], label,
               ", ".join(s.get("domains") or []), f"{s['tokens_per_s']:.1f}",
               num(s["j_per_prompt_token"]), jt, num(s["j_per_request"]),
               num(s["co2e_g_per_1k_tokens"]), num(s["usd_per_m_tokens"])]
        if dynamic:
            d, dci = s.get("dynamic_j_per_token"), s.get("dynamic_j_per_token_ci95")
            row.append("-" if d is None else f"{d:.4g} [{dci[0]:.4g}, {dci[1]:.4g}]" if dci else f"{d:.4g} [n/a]")
        table.add_row(*row)
    # piped: never wrapped; data, never markup (a "[n/a]" interval, a model named "x [bold]")
    Console(soft_wrap=False, width=None if sys.stdout.isatty() else 1000, markup=False).print(table)
    notes = list(doc.get("notes", []))
    for s in doc["summary"]:
        notes.extend(s.get("notes", []))
        if s["method"] != "measured":
            notes.append(f"{s['model']}: energy is {s['method']} (see `greenprof sensors`)")
        if s["basis"] == "attributed" and s.get("gross_j_per_token") is not None \
                and s["gross_j_per_token"] > s["j_per_token"] * 1.001:
            notes.append(f"{s['model']}: attributed {s['j_per_token']:.4g} J/gen token of the "
                         f"{s['gross_j_per_token']:.4g} the counters saw (gross): the rest was other "
                         "processes' share")
    err = Console(stderr=True, soft_wrap=True, highlight=False)  # one line per note, never wrapped
    from rich.markup import escape

    for n in dict.fromkeys(notes):
        err.print(f"[yellow]note:[/yellow] {escape(n)}")
    ids = [i for r in doc["runs"] for i in [r["id"]]]
    if ids:
        err.print(f"stored runs {ids[0]}..{ids[-1]}; see `greenprof runs` and `greenprof show RUN_ID`",
                  markup=False)


def _human_params(n) -> str:
    from greenprof.fmt import human_params

    return human_params(n)



def _register_subcommands() -> None:
    from greenprof.cli_dashboard import register as register_dashboard
    from greenprof.cli_runs import register
    from greenprof.ladder import register as register_ladder
    from greenprof.models.cli import app as models_app
    from greenprof.serve import register_serve

    register(app)
    register_dashboard(app)
    register_ladder(app)
    register_serve(app)
    app.add_typer(models_app, name="models", help="Built-in model family: list, build, info.")


_register_subcommands()

class _Stopped(GreenprofError):
    """Ctrl-C or SIGTERM during a command that stores runs."""


def _click_exceptions():
    """The click exceptions module typer uses (typer >= 0.22 vendors click as typer._click)."""
    return sys.modules[typer.BadParameter.__module__]


def _usage_line(e) -> str:
    """A click usage error as one line, naming the flag as typed, with a suggestion only when one
    is close (click's own would offer --runs for --bogus)."""
    import difflib

    exc = _click_exceptions()
    if isinstance(e, exc.NoSuchOption):
        msg = f"no such option: {e.option_name}"
        names = [p.lstrip("-") for p in (e.possibilities or [])]
        close = difflib.get_close_matches(e.option_name.lstrip("-"), names, n=1, cutoff=0.75)
        if close:
            msg += f" (did you mean --{close[0]}?)"
    elif isinstance(e, exc.BadParameter) and not isinstance(e, exc.MissingParameter):
        what = e.param_hint if isinstance(e.param_hint, str) else None
        if what is None and e.param is not None:
            longs = [o for o in getattr(e.param, "opts", ()) if o.startswith("--")]
            what = longs[0] if longs else (e.param.metavar or (e.param.name or "value").upper())
        msg = f"{(what or 'a value').strip(chr(39) + chr(34))}: {e.message}"
    else:
        msg = e.format_message()
    msg = " ".join(str(msg).split())  # one line
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        msg += f" (see `{ctx.command_path} --help`)"
    return msg


def _tidy_help(cmd) -> None:
    """Help without type placeholders (``<bool>``, ``<list[str]>``): a flag shows none, an
    argument its name, an option its metavar (``N``, ``FILE``, ...), or TEXT/N/X by type."""
    by_type = {"<int>": "N", "<float>": "X", "<str>": "TEXT", "<path>": "PATH"}

    def tidy(p) -> None:
        if getattr(p, "_greenprof_tidy", False) or not hasattr(p, "display_type_rich"):
            return
        if p.param_type_name == "argument" and p.metavar:
            # "[MODEL]..." as a metavar reads "[[MODEL]...]..." in the usage line: the bare name
            # is enough, the brackets and dots are added from the argument's own shape
            p.metavar = p.metavar.strip("[].") or p.metavar
        if p.param_type_name == "argument" or getattr(p, "is_flag", False) or getattr(p, "count", False):
            p.display_type_rich = lambda ctx: None
        elif p.metavar is None:
            try:
                shown = p.display_type(None) if hasattr(p, "display_type") else None
            except Exception:  # a choice type may need a context: no guess then
                shown = None
            p.metavar = by_type.get(shown, "VALUE")
        p._greenprof_tidy = True

    original = cmd.get_params

    def get_params(ctx):
        params = original(ctx)
        for p in params:
            tidy(p)
        return params

    cmd.get_params = get_params
    for sub in (getattr(cmd, "commands", None) or {}).values():
        _tidy_help(sub)


def _drop_stdout() -> None:
    """After stdout failed: point it at /dev/null, so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> None:
    """The console script: every error is one line on stderr (exit 2 for a usage error)."""
    exc = _click_exceptions()
    no_args = getattr(exc, "NoArgsIsHelpError", ())
    command = typer.main.get_command(app)
    _tidy_help(command)
    try:
        rv = command.main(args=argv, prog_name="greenprof", standalone_mode=False)
    except GreenprofError as e:
        sys.stderr.write(f"greenprof: {'error: ' if not isinstance(e, _Stopped) else ''}{e}\n")
        sys.exit(e.exit_code)
    except no_args:
        sys.exit(2)  # the help is printed already
    except exc.UsageError as e:
        sys.stderr.write(f"greenprof: error: {_usage_line(e)}\n")
        sys.exit(2)
    except exc.ClickException as e:
        sys.stderr.write(f"greenprof: error: {' '.join(e.format_message().split())}\n")
        sys.exit(e.exit_code)
    except (getattr(exc, "Abort", typer.Abort), typer.Abort, KeyboardInterrupt):
        sys.stderr.write("greenprof: interrupted\n")
        sys.exit(130)
    except BrokenPipeError:  # the reader of stdout went away (`greenprof runs | head`)
        _drop_stdout()
        sys.exit(141)
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS, errno.EBADF):
            raise
        _drop_stdout()
        sys.stderr.write(f"greenprof: error: cannot write the output: {e.strerror or e} (free some space or "
                         "write elsewhere, e.g. with -o FILE where the command has it)\n")
        sys.exit(1)
    if isinstance(rv, int) and not isinstance(rv, bool) and rv:
        sys.exit(rv)


if __name__ == "__main__":  # pragma: no cover
    main()
