"""``greenprof models``: list, build and inspect the built-in random-weight models.

Data goes to stdout (a folder path, a table, JSON); the progress bar goes to stderr. User
mistakes raise :class:`greenprof.errors.UsageError`, which the main CLI prints as one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

from greenprof.errors import UsageError

app = typer.Typer(
    help="Built-in decoder LMs of real shapes (SmolLM, Phi-3, Llama-2, Mistral-NeMo, Falcon-40B) with seeded "
    "random weights, exported to ONNX with a KV cache in fp32, int8 or int4; `info` describes any ONNX export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_CACHE_OPTION = typer.Option(None, "--cache-dir", help="Model cache folder (default $GREENPROF_CACHE, "
                             "else ~/.cache/greenprof/models).")


def _human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _short_bytes(n: int) -> str:
    """Compact size for table cells: 567K, 82.5M, 7.1G."""
    for div, suffix in ((2**30, "G"), (2**20, "M"), (2**10, "K")):
        if n >= div:
            v = n / div
            return f"{v:.1f}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{n}B"


def _human_count(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}" if div == 1e9 else f"{n / div:.1f}{suffix}"
    return str(n)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    cache_dir: Optional[Path] = _CACHE_OPTION,
) -> None:
    """Every built-in shape: parameters, and per precision whether it is built, its size on disk and
    the memory it needs to run (models that need more than this machine has cannot be built here)."""
    from greenprof.models.builder import (
        PRECISIONS,
        cache_root,
        is_built,
        machine_memory_bytes,
        memory_needed_bytes,
        model_dir,
        planned_bytes,
    )
    from greenprof.models.shapes import SHAPES, param_count

    have = machine_memory_bytes()
    models: list[dict[str, Any]] = []
    for shape in SHAPES.values():
        precisions: dict[str, Any] = {}
        for precision in PRECISIONS:
            folder = model_dir(shape, precision, cache_dir)
            built = is_built(shape, precision, cache_dir)
            need = memory_needed_bytes(shape, precision)
            precisions[precision] = {
                "built": built,
                "path": str(folder) if built else None,
                "bytes": _folder_bytes(folder) if built else None,
                "estimated_bytes": planned_bytes(shape, precision),
                "memory_bytes": need,
                "fits_in_memory": need <= have,
            }
        models.append({
            "name": shape.name,
            "hf_id": shape.hf_id or None,
            "architecture": shape.architecture,
            "params": param_count(shape),
            "shape": shape.to_dict(),
            "precisions": precisions,
        })
    if as_json:
        typer.echo(json.dumps({"cache": str(cache_root(cache_dir)), "machine_memory_bytes": have,
                                "models": models}, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Built-in models (cache: {cache_root(cache_dir)})", title_justify="left", box=None,
                  padding=(0, 1), pad_edge=False)
    table.add_column("name", no_wrap=True)
    for col in ("params", "layers", "hidden", "heads", "vocab", *PRECISIONS):
        table.add_column(col, justify="right", no_wrap=True)
    too_big = False
    for m in models:
        s = m["shape"]
        cells = []
        for precision in PRECISIONS:
            info = m["precisions"][precision]
            need = _short_bytes(info["memory_bytes"])
            if not info["fits_in_memory"]:
                too_big = True
                cells.append(f"[red]{need}![/red]")
            else:
                cells.append(f"[green]{need}[/green]" if info["built"] else f"[dim]{need}[/dim]")
        table.add_row(m["name"], _human_count(m["params"]), str(s["layers"]), str(s["hidden"]),
                      f"{s['heads']}/{s['kv_heads']}", str(s["vocab"]), *cells)
    console = _out()
    console.print(table)
    console.print("[dim]fp32/int8/int4: memory needed to run it (weights as loaded, KV cache of 2048 tokens, "
                  "runtime), [green]green[/green] when built (sizes on disk: --json). "
                  "Build: greenprof models build NAME --precision int4[/dim]")
    if too_big:
        console.print(f"[red]![/red] [dim]more than this machine's {_human_bytes(have)}: not built or measured here; "
                      "`greenprof ladder` extrapolates it from the sizes measured here[/dim]")


def _out() -> "Console":
    """stdout: as wide as the terminal, or, piped to a file, as wide as the content (never wrapped)."""
    import sys

    from rich.console import Console

    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 1000)


@app.command("build")
def build_model(
    name: str = typer.Argument(..., help="Model name, see `greenprof models list`."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32, int8 or int4."),
    attention: str = typer.Option("gqa", "--attention", help="gqa: onnxruntime's fused GroupQueryAttention "
                                  "(default); plain: standard ONNX ops, for comparison."),
    cache_dir: Optional[Path] = _CACHE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Build a model (a no-op when it is already built) and print its folder on stdout."""
    from greenprof.models.builder import build, check_attention, check_precision, is_built
    from greenprof.models.shapes import get_shape

    shape = get_shape(name)  # UsageError for an unknown name, before any work
    precision = check_precision(precision)
    attention = check_attention(attention)
    if quiet or is_built(shape, precision, cache_dir, attention=attention):
        folder = build(shape, precision, cache_dir, attention=attention)
    else:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(TextColumn(f"building {shape.name} {precision}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                      transient=True) as bar:
            task = bar.add_task("build", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            folder = build(shape, precision, cache_dir, progress, attention=attention)
    typer.echo(str(folder))


@app.command("info")
def info(
    path: str = typer.Argument(..., help="A model name, a built model folder, or any ONNX decoder export: an "
                                "optimum export (folder or .onnx) or an onnxruntime-genai folder."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="With a model name: which build."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    cache_dir: Optional[Path] = _CACHE_OPTION,
) -> None:
    """What a model is, read from its graph without loading its weights: format, layers, hidden size,
    heads, kv heads, vocabulary, KV dtype, precision, parameter count, file size, tokenizer; for a
    greenprof build also its metadata (shape, hashes, signature)."""
    from greenprof.models.builder import check_precision, model_dir
    from greenprof.models.inspect import inspect_model
    from greenprof.models.shapes import SHAPES

    target = Path(path).expanduser()
    if not target.exists():
        if path.strip().lower() in SHAPES:
            target = model_dir(path, check_precision(precision), cache_dir)
            if not target.exists():
                raise UsageError(f"{path} {precision} is not built: run `greenprof models build {path} "
                                 f"--precision {precision}`")
        elif os.sep in path or "/" in path or path.endswith((".onnx", ".json")):
            raise UsageError(f"model path {path} does not exist: give a built-in name or an ONNX export "
                             "(an .onnx file, an optimum export folder or an onnxruntime-genai folder)")
        else:
            raise UsageError(f"unknown model {path!r} (built-in names: {', '.join(SHAPES)}); or give the path "
                             "of an ONNX export")
    doc = inspect_model(target)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    meta = doc.get("metadata")
    if meta is None:
        _print_export(doc)
        return
    folder = target if target.is_dir() else target.parent
    shape = meta.get("shape", {})
    quant = meta.get("quantization") or {}
    rows = [
        ("name", meta.get("name")),
        ("shape of", meta.get("hf_id") or "-"),
        ("architecture", shape.get("architecture", "llama")),
        ("folder", str(folder)),
        ("parameters", f"{meta.get('param_count', 0):,}"),
        ("precision", meta.get("precision")),
        ("quantization", f"{quant.get('bits')}-bit, block {quant.get('block_size')} ({quant.get('method')})"
         if quant else "none"),
        ("layers / hidden", f"{shape.get('layers')} / {shape.get('hidden')}"),
        ("heads / kv heads / head dim", f"{shape.get('heads')} / {shape.get('kv_heads')} / {shape.get('head_dim')}"),
        ("intermediate / vocab", f"{shape.get('intermediate')} / {shape.get('vocab')}"),
        ("tied embeddings", str(shape.get("tied_embeddings"))),
        ("context length", str(meta.get("context_length"))),
        ("attention", meta.get("attention")),
        ("opset", ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in meta.get("opset", {}).items())),
        ("builder version", str(meta.get("builder_version"))),
        ("created", meta.get("created")),
        ("model sha256", meta.get("model_sha256")),
    ]
    for fname, finfo in meta.get("files", {}).items():
        rows.append((fname, f"{_human_bytes(finfo.get('bytes'))}  sha256 {finfo.get('sha256', '')[:16]}…"))
    rows.append(("parameters in the graph", f"{doc['params']:,}  ({_by_dtype(doc)})"))
    _print_rows(rows)


def _by_dtype(doc: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_human_count(v)}" for k, v in doc["params_by_dtype"].items()) or "none"


def _print_rows(rows: list[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, "-" if value is None else str(value))
    _out().print(table)


_FORMATS = {"optimum": "optimum export", "genai": "onnxruntime-genai folder"}


def _print_export(doc: dict[str, Any]) -> None:
    """The table of ``models info`` for an optimum or onnxruntime-genai export."""
    tied = {True: "yes", False: "no", None: "unknown"}[doc["tied_embeddings"]]
    rows = [
        ("name", doc["name"]),
        ("format", _FORMATS.get(doc["format"], doc["format"])),
        ("model file", doc["model_file"]),
        ("architecture", doc["architecture"]),
        ("parameters", f"{doc['params']:,}  ({_by_dtype(doc)})"),
        ("precision", doc["precision"]),
        ("layers / hidden", f"{doc['layers']} / {doc['hidden'] if doc['hidden'] is not None else '-'}"),
        ("heads / kv heads / head dim", " / ".join("-" if doc[k] is None else str(doc[k])
                                                   for k in ("heads", "kv_heads", "head_dim"))),
        ("vocab", doc["vocab"]),
        ("KV cache dtype", doc["kv_dtype"]),
        ("tied embeddings", tied),
        ("context length", doc["context_length"]),
        ("tokenizer", "tokenizer.json" if doc["tokenizer"] else "none (give --prompt-tokens N to measure)"),
        ("size", f"{_human_bytes(doc['file_bytes'])} in {len(doc['files'])} file(s)"),
    ]
    rows += [("note", n) for n in doc["notes"]]
    _print_rows(rows)
