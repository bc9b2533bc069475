"""`greenprof` command line. Data goes to stdout, progress and errors to stderr.

A user mistake prints one line (no traceback) and exits 2; a runtime failure exits 1.
"""

from __future__ import annotations

import json
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

    The default set (what `Meter()` and `greenprof measure` use) is marked. Exits 0 even when
    only the CPU estimate is available.
    """
    from greenprof.collectors import discover_all

    found = discover_all()
    found.close()
    default = [s.domain for s in found.statuses if s.available and s.in_default_set]
    measured = [s.domain for s in found.statuses
                if s.available and s.in_default_set and s.method == "measured"]
    if as_json:
        doc = {
            "greenprof_version": __version__,
            "sensors": [s.to_dict() for s in found.statuses],
            "default_set": default,
            "estimate_only": not measured,
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
        if s.why_not:
            note = f"{note}\n{s.why_not}" if note else s.why_not
        table.add_row(s.source, s.domain, s.method, state, note)
    out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    out.print(table)
    if not measured:
        Console(stderr=True).print(
            "[yellow]No energy sensor is readable here: figures will be labelled 'estimated'.[/yellow]"
        )


@app.command()
def measure(
    models: list[str] = typer.Argument(None, metavar="[MODEL]...",
                                       help="Built-in names (built on first use) or paths to ONNX exports. "
                                            "Default: smollm-135m smollm-360m."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, int8 or int4 (built-in models)."),
    prompt: str = typer.Option(None, "--prompt", help="Prompt text (needs the model's tokenizer.json)."),
    prompt_file: Path = typer.Option(None, "--prompt-file", help="Read the prompt text from a file."),
    prompt_tokens: int = typer.Option(None, "--prompt-tokens", help="A synthetic prompt of N tokens (default 128)."),
    new_tokens: int = typer.Option(64, "--new-tokens", help="Tokens generated per run (fixed length; EOS ignored)."),
    batch: int = typer.Option(1, "--batch", help="Sequences generated together (per-token figures are per sequence token)."),
    runs: int = typer.Option(3, "--runs", help="Measured runs per model, for the mean and 95% CI."),
    warmup: int = typer.Option(1, "--warmup", help="Unmeasured warm-up generations per model."),
    threads: int = typer.Option(None, "--threads", help="onnxruntime intra-op threads (default: config, else all cores)."),
    spinning: bool = typer.Option(False, "--spinning", help="Let onnxruntime's idle worker threads busy-wait "
                                  "between ops: often faster on few cores, but the busy-waiting is CPU time that "
                                  "the estimate and RAPL count as energy. Off by default."),
    graph_opt: str = typer.Option("all", "--graph-opt", help="onnxruntime graph optimisation level: disable, "
                                  "basic, extended, layout or all."),
    idle_s: float = typer.Option(0.0, "--idle-s", help="Seconds of idle baseline before each run (dynamic = gross - idle)."),
    provider: str = typer.Option("cpu", "--provider", help="onnxruntime execution provider: cpu, cuda or cuda:N."),
    collectors: str = typer.Option(None, "--collectors", help="Energy domains to charge, comma-separated (e.g. "
                                   "cpu-package-0,dram-0 or gpu-0,cpu-estimate; see `greenprof sensors`). Default: "
                                   "the device the model runs on: CPU domains for a CPU run (never an idle GPU), "
                                   "its own GPU plus the host CPU for a CUDA run."),
    region: str = typer.Option(None, "--region", help="Grid region for CO2e: ISO3 (FRA), ISO2, name, or USA/CA."),
    intensity: float = typer.Option(None, "--intensity", help="Grid intensity in g CO2e/kWh (market-based factor); overrides --region."),
    pue: float = typer.Option(None, "--pue", help="Data-centre PUE (default 1.0)."),
    price_kwh: float = typer.Option(None, "--price-kwh", help="Electricity price in USD/kWh (default: US commercial average)."),
    db: str = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default ./greenprof.db or GREENPROF_DB)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (runs and summary) on stdout."),
) -> None:
    """Measure joules, CO2e and cost per token for one or more models.

    Each model runs WARMUP unmeasured generations, then RUNS measured ones, each stored in the
    database with its segments (prefill and every token) and power timeline. Progress goes to
    stderr; the summary table (or --json) to stdout.
    """
    from greenprof.config import load_settings
    from greenprof.measure import DEFAULT_MODELS, MeasureRequest, measure_models

    if prompt is not None and prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both")
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read --prompt-file {prompt_file}: {e.strerror or e}") from None
    settings = load_settings({"db": db, "region": region, "intensity_g_per_kwh": intensity, "pue": pue,
                              "price_usd_per_kwh": price_kwh, "threads": threads})
    req = MeasureRequest(models=models or list(DEFAULT_MODELS), precision=precision, prompt=prompt,
                         prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch, runs=runs, warmup=warmup,
                         threads=settings.threads, spinning=spinning, graph_opt=graph_opt, idle_s=idle_s, sample_hz=settings.sample_hz,
                         provider=provider, collectors=collectors)
    from rich.console import Console

    err = Console(stderr=True)
    from greenprof.measure import Terminated

    try:
        with _build_progress(err) as (on_build, status):
            doc = measure_models(req, settings=settings, progress=status, build_progress=on_build)
    except KeyboardInterrupt:
        e = _Stopped("interrupted; the run in progress is stored as interrupted")
        e.exit_code = 130
        raise e from None
    except Terminated:
        e = _Stopped("terminated; the run in progress is stored as interrupted")
        e.exit_code = 143
        raise e from None
    if as_json:
        from greenprof.accounting import clean_json

        typer.echo(json.dumps(clean_json(doc), indent=2, allow_nan=False))
        return
    _print_summary(doc)


class _build_progress:
    """A rich progress bar for model builds plus one-line status messages, all on stderr."""

    def __init__(self, console) -> None:
        self.console = console
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()

        def on_build(name: str, done: int, total: int) -> None:
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(f"building {name}", total=total)
            self.progress.update(self.tasks[name], completed=done, total=total)

        def status(msg: str) -> None:
            self.progress.console.print(msg, style="dim", markup=False, highlight=False)

        return on_build, status

    def __exit__(self, *exc) -> bool:
        self.progress.stop()
        return False


def _print_summary(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from greenprof.accounting import energy_label

    grid = doc["grid"]
    table = Table(title=f"Energy per token ({grid['name']}, {grid['intensity_g_per_kwh']:.0f} g CO2e/kWh, "
                        f"PUE {doc['pue']:g}, ${doc['price_usd_per_kwh']:g}/kWh)", title_justify="left")
    for col, just in (("model", "left"), ("params", "right"), ("precision", "left"), ("energy", "left"),
                      ("domains", "left"), ("tokens/s", "right"), ("J/prompt token", "right"),
                      ("J/gen token, decode (95% CI)", "right"), ("J/request, all phases", "right"),
                      ("g CO2e/1k gen tokens", "right"), ("$/M gen tokens", "right")):
        table.add_column(col, justify=just)

    def num(x) -> str:
        return "-" if x is None else f"{x:.4g}"

    for s in doc["summary"]:
        ci = s["j_per_token_ci95"]
        jt = f"{s['j_per_token']:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else f"{s['j_per_token']:.4g} [n/a]"
        flags = []
        if s.get("partial_run_ids"):
            flags.append("partial")
        if s.get("uncertain_run_ids"):
            flags.append("uncertain")
        label = energy_label(s["method"], s["basis"]) + (f" {', '.join(flags)}" if flags else "")
        table.add_row(s["model"], _human_params(s["params"]), s["precision"], label,
                      ", ".join(s.get("domains") or []), f"{s['tokens_per_s']:.1f}",
                      num(s["j_per_prompt_token"]), jt, num(s["j_per_request"]),
                      num(s["co2e_g_per_1k_tokens"]), num(s["usd_per_m_tokens"]))
    Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200).print(table)
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
    err = Console(stderr=True)
    from rich.markup import escape

    for n in dict.fromkeys(notes):
        err.print(f"[yellow]note:[/yellow] {escape(n)}")
    ids = [i for r in doc["runs"] for i in [r["run_id"]]]
    if ids:
        err.print(f"stored runs {ids[0]}..{ids[-1]}; see `greenprof runs` and `greenprof show RUN_ID`")


def _human_params(n) -> str:
    from greenprof.fmt import human_params

    return human_params(n)



def _register_subcommands() -> None:
    from greenprof.cli_dashboard import register as register_dashboard
    from greenprof.cli_runs import register
    from greenprof.models.cli import app as models_app

    register(app)
    register_dashboard(app)
    app.add_typer(models_app, name="models", help="Built-in model family: list, build, info.")


_register_subcommands()

class _Stopped(GreenprofError):
    """Ctrl-C or SIGTERM during a command that stores runs."""


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="greenprof")
    except GreenprofError as e:
        sys.stderr.write(f"greenprof: {'error: ' if not isinstance(e, _Stopped) else ''}{e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("greenprof: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
