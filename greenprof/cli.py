"""`greenprof` command line. Data goes to stdout, progress and errors to stderr.

A user mistake prints one line (no traceback) and exits 2; a runtime failure exits 1.
"""

from __future__ import annotations

import json
import sys

import typer

from greenprof import __version__
from greenprof.errors import GreenprofError

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
    clearly labelled estimate (this process's CPU time x per-thread TDP). Run `greenprof sensors`
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


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="greenprof")
    except GreenprofError as e:
        sys.stderr.write(f"greenprof: error: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("greenprof: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
