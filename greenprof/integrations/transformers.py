"""Hugging Face ``generate``, measured per token: ``EnergyStreamer``.

    from greenprof.integrations.transformers import EnergyStreamer

    streamer = EnergyStreamer(model)                       # or EnergyStreamer(model, streamer=TextStreamer(tok))
    out = model.generate(**inputs, max_new_tokens=64, streamer=streamer)
    streamer.run_id, streamer.j_per_token, streamer.co2e_g, streamer.attribution.per_token_j

``generate`` hands a streamer the prompt ids first (``put(prompt_ids)``, shape ``[batch, n]``),
then every new token as soon as it is chosen (``put(tokens)``, shape ``[batch]``; assisted
decoding hands several at once, ``[batch, k]``), and calls ``end()`` when it is done. The
streamer opens a window on greenprof's shared meter (``Meter(split=True)``, like ``track``) at
the prompt and marks it at every call, so the segments are:

    prompt handed over  .. token 1 chosen        "prefill"   (the prompt pass, which yields token 1)
    token i chosen      .. token i+1 chosen      "token-i"   (the decode pass that feeds token i)
    token N chosen      .. end()                 "token-N"   (generate's bookkeeping: HF never feeds
                                                              the last token back through the model)

That is one ``prefill`` segment and exactly one ``token-i`` segment per generated token, the labels
greenprof's own runner uses, so :func:`greenprof.accounting.attribute` gives the per-token figures.
HF runs N-1 decode passes for N new tokens (the first token comes from the prompt pass), where
greenprof's runner feeds every token (N passes): J/token of the two differ by about that factor.

Each ``generate`` call is one run in the store (``kind = "track"``, like ``greenprof.track``),
with the model name from ``model.config`` (``name_or_path``, else ``model_type``), the parameter
count from the model (``num_parameters()``: tied weights once; for an onnxruntime model, its ONNX
initializers through :func:`greenprof.models.inspect.count_params`), the precision from its dtype
(fp32, fp16, bf16; int8/int4 from a ``quantization_config``), the prompt and generated token
counts and the batch size; ``finish_run`` gets one token count per segment, as ``measure``
stores them. optimum's ``ORTModelForCausalLM`` uses the same ``generate``, so the streamer works
there unchanged (not covered by greenprof's tests: optimum is not a test dependency).

Your own streamer still gets every call: ``EnergyStreamer(model, streamer=TextStreamer(tok))``
(or a list of streamers); they are called after the meter is marked, so their work on token i
falls in the next token's segment, as the rest of generate's per-token work does.

Failures follow ``track``: a store that cannot be used never fails ``generate`` (one
:class:`~greenprof.meter.GreenprofWarning`, the figures stay on the streamer). An exception inside
``generate`` skips ``end()``: create the streamer in a ``with EnergyStreamer(model) as s:`` block
(or call ``s.close()`` in your ``except``) so the run is stored as ``failed`` (Ctrl-C:
``interrupted``) and the meter's window is closed.

Nothing here imports transformers or torch: the streamer only reads the tensors' ``shape`` and the
model's attributes.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from greenprof.errors import UsageError
from greenprof.tracking import RunFigures, _one_line, enclosing_run, stored_as

__all__ = ["EnergyStreamer"]

_DTYPE_PRECISION = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
                    "float64": "fp64", "int8": "int8"}


def _shape(value: Any) -> tuple[int, ...]:
    shape = getattr(value, "shape", None)
    if shape is None:
        import numpy as np

        shape = np.asarray(value).shape
    return tuple(int(d) for d in shape)


def _onnx_path(model: Any) -> Any:
    """The ONNX file or folder of an onnxruntime-backed model (optimum's ORTModelForCausalLM)."""
    for attr in ("model_path", "path", "model_save_dir"):
        p = getattr(model, attr, None)
        if p is not None and not callable(p):
            return p
    return None


def describe_model(model: Any) -> dict[str, Any]:
    """What the run row says about a transformers (or optimum) model: ``name``, ``params``,
    ``precision``, ``device``, ``provider``, ``threads``. Best effort: None where unknown."""
    out: dict[str, Any] = {"name": None, "params": None, "precision": None, "device": None, "provider": None,
                           "threads": None, "dtype": None}
    if model is None:
        return out
    config = getattr(model, "config", None)
    if config is not None:
        out["name"] = (getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
                       or getattr(config, "model_type", None))
    out["name"] = out["name"] or type(model).__name__
    torch_model = callable(getattr(model, "parameters", None))
    try:
        if torch_model and callable(getattr(model, "num_parameters", None)):
            out["params"] = int(model.num_parameters())  # unique parameters: a tied head once
        elif torch_model:
            seen: dict[int, int] = {id(p): p.numel() for p in model.parameters()}
            out["params"] = int(sum(seen.values()))
    except Exception:
        out["params"] = None
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        out["dtype"] = str(dtype).replace("torch.", "")
        out["precision"] = _DTYPE_PRECISION.get(out["dtype"], out["dtype"])
    quant = getattr(config, "quantization_config", None) if config is not None else None
    if quant is not None:
        q = quant if isinstance(quant, dict) else getattr(quant, "to_dict", lambda: {})()
        bits = q.get("bits") or (4 if q.get("load_in_4bit") else 8 if q.get("load_in_8bit") else None)
        if bits in (4, 8):
            out["precision"] = f"int{bits}"
    device = getattr(model, "device", None)
    if device is not None:
        out["device"] = str(device)
    if torch_model:
        out["provider"] = f"torch:{out['device'] or 'cpu'}"
        torch = sys.modules.get("torch")
        if torch is not None and (out["device"] or "cpu").startswith("cpu"):
            out["threads"] = int(torch.get_num_threads())
    else:
        path = _onnx_path(model)
        if path is not None:
            try:
                from greenprof.models.inspect import count_params

                count = count_params(path)
                out["params"], out["precision"] = count.total, count.precision
            except Exception:
                pass
        session = getattr(model, "session", None) or getattr(model, "model", None)  # optimum: an InferenceSession
        providers = getattr(session, "get_providers", None)
        try:
            out["provider"] = providers()[0] if callable(providers) else "onnxruntime"
        except Exception:
            out["provider"] = "onnxruntime"
    return out


class EnergyStreamer(RunFigures):
    """A streamer for ``model.generate(..., streamer=...)`` that measures prefill and every token.

    Parameters
    ----------
    model:
        The model ``generate`` is called on (a transformers ``PreTrainedModel`` or optimum's
        ``ORTModelForCausalLM``): its name, parameter count, precision and device go with the run.
        None: give ``model_name`` (and ``params``, ``precision``) yourself.
    streamer:
        Your own streamer (``TextStreamer``, ``TextIteratorStreamer``, ...) or a list of them: each
        gets every ``put`` and ``end`` too.
    model_name, params, precision:
        Override what is read from ``model``.
    db, collectors, sample_hz, idle_s, region, intensity, pue, price_kwh, store:
        As for :class:`greenprof.track`. ``collectors="auto"``: the domains of the device the model
        runs on (a CPU model its CPU domains, a CUDA model its GPU plus the host CPU), as
        ``greenprof measure`` charges them.

    After ``generate`` returns: ``run_id`` (None when not stored), ``runs`` (every generation's
    run id, in order), ``measurement``, ``prompt_tokens``, ``new_tokens``, ``batch``, and the figures
    of the latest generation from :mod:`greenprof.accounting`: ``figures`` (RunFigures),
    ``attribution`` (per-token figures), ``energy_j``, ``gross_energy_j``, ``j_per_token``,
    ``j_per_prompt_token``, ``co2e_g``, ``cost_usd``, ``warnings``.
    """

    def __init__(self, model: Any = None, *, streamer: Any = None, model_name: str | None = None,
                 params: int | None = None, precision: str | None = None, db: str | None = None,
                 collectors: Any = "auto", sample_hz: float | None = None, idle_s: float = 0.0,
                 region: str | None = None, intensity: float | None = None, pue: float | None = None,
                 price_kwh: float | None = None, store: bool = True) -> None:
        inner: Sequence[Any] = () if streamer is None else (
            list(streamer) if isinstance(streamer, (list, tuple)) else [streamer])
        for s in inner:
            if not (callable(getattr(s, "put", None)) and callable(getattr(s, "end", None))):
                raise UsageError(f"streamer= takes a transformers streamer (with put() and end()), or a list of "
                                 f"them (got {type(s).__name__})")
        if params is not None and (not isinstance(params, int) or isinstance(params, bool) or params < 0):
            raise UsageError(f"params= takes a whole number of parameters (got {params!r})")
        self._inner = list(inner)
        self._model = model
        self._overrides = {"name": model_name, "params": params, "precision": precision}
        self._settings_overrides = {"db": db, "region": region, "intensity_g_per_kwh": intensity, "pue": pue,
                                    "price_usd_per_kwh": price_kwh, "sample_hz": sample_hz}
        self._collectors = collectors
        self._idle_s = idle_s
        self._use_store = bool(store)
        self.runs: list[int] = []
        self._meter: Any = None
        self._store: Any = None
        self._received = 0
        self._reset_results()

    def _reset_results(self) -> None:
        self.run_id: int | None = None
        self.measurement: Any = None
        self.prompt_tokens: int | None = None
        self.new_tokens = 0
        self.batch = 1
        self.status: str | None = None
        self.grid: Any = None
        self.pue = 1.0
        self.price_usd_per_kwh: float | None = None
        self.model_info: dict[str, Any] = {}
        self._warnings: list[str] = []
        self._store_warned = False

    # -- the streamer protocol -----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._meter is not None

    def put(self, value: Any) -> None:
        """Called by ``generate``: the prompt ids first, then the new token(s) of every step."""
        shape = _shape(value)
        if not self.running:
            for s in self._inner:
                s.put(value)
            self._begin(shape)
            return
        k = shape[-1] if len(shape) >= 2 else 1  # [batch] one token per row; [batch, k] k tokens
        self._meter.mark("prefill" if self._received == 0 else f"token-{self._received}")
        for j in range(1, k):  # tokens that arrived together (assisted decoding): empty segments
            self._meter.mark(f"token-{self._received + j}")
        self._received += k
        for s in self._inner:
            s.put(value)

    def end(self) -> None:
        """Called by ``generate`` when it is done: close the last token's segment and store the run."""
        if self.running and self._received:
            self._meter.mark(f"token-{self._received}")
        for s in self._inner:
            s.end()
        if self.running:
            self._finish("completed", None)

    # -- with-block: a generate that raises still stores its run ---------------------------------
    def close(self, error: str | None = None, *, interrupted: bool = False) -> None:
        """Close a generation that ``generate`` left open (it raised before ``end()``): the run is
        stored as ``failed`` (``interrupted=True``: ``interrupted``). Nothing to do otherwise."""
        if self.running:
            self._finish("interrupted" if interrupted else "failed",
                         None if interrupted else (error or "generate() did not call end()"))

    def __enter__(self) -> "EnergyStreamer":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or issubclass(exc_type, Exception):
            self.close(f"{exc_type.__name__}: {_one_line(str(exc))}" if exc_type is not None else None)
        else:
            self.close(interrupted=True)  # KeyboardInterrupt, SystemExit
        return False

    # -- run lifecycle ------------------------------------------------------------------------
    def _begin(self, shape: tuple[int, ...]) -> None:
        from greenprof import carbon
        from greenprof.config import load_settings, resolve_intensity
        from greenprof.meter import Meter

        self._reset_results()
        if len(shape) >= 2:
            self.batch, self.prompt_tokens = int(shape[0]), int(shape[-1])
        else:
            self.batch, self.prompt_tokens = 1, int(shape[0]) if shape else 1
        self._received = 0
        info = describe_model(self._model)
        for key, value in self._overrides.items():
            if value is not None:
                info[key] = value
        self.model_info = info
        settings = load_settings(self._settings_overrides)
        self.grid, note = resolve_intensity(settings)
        self.pue = settings.pue
        self.price_usd_per_kwh = (settings.price_usd_per_kwh if settings.price_usd_per_kwh is not None
                                  else carbon.DEFAULT_PRICE_USD_PER_KWH)
        collectors = self._collectors
        if collectors == "auto" and self._model is not None:
            collectors = self._device_collectors(info.get("device"))
        label = collectors if isinstance(collectors, str) else ",".join(map(str, collectors))
        if self._use_store:
            self._open_store(settings.db, label)
        meter = Meter(collectors=collectors, sample_hz=settings.sample_hz, idle_s=self._idle_s, split=True)
        if self._store is not None and self.run_id is not None:
            stored_as(meter, self._store, self.run_id)
        try:
            meter.start()
        except BaseException as e:
            self._close_store(None, "failed", f"the meter could not start: {type(e).__name__}: {e}")
            raise
        self._meter = meter

    @staticmethod
    def _device_collectors(device: str | None) -> Any:
        """The domains ``measure`` charges a run on this device; "auto" when that cannot be told."""
        kind, _, index = (device or "cpu").partition(":")
        if kind not in ("cpu", "cuda"):
            return "auto"
        from greenprof.measure import collectors_for_device

        try:
            chosen = collectors_for_device(kind, int(index) if index.isdigit() else 0)
        except Exception:
            return "auto"
        return chosen or "auto"

    def _finish(self, status: str, error: str | None) -> None:
        meter, self._meter = self._meter, None
        m = meter.stop(status=status)
        self.measurement = m
        self.status = status
        self.new_tokens = self._received
        tokens: dict[str, int] = {}
        if self._received:
            tokens = {"prefill": self.prompt_tokens * self.batch}
            tokens.update({f"token-{i}": self.batch for i in range(1, self._received + 1)})
        self._keep_warnings()
        self._close_store(m, status, error, tokens)

    def _open_store(self, db: Any, collectors_label: str) -> None:
        from greenprof.store import open_store

        try:
            store = open_store(db, setting="EnergyStreamer(db=...)")
        except Exception as e:
            self._store_failed("cannot open the database", e)
            return
        info = self.model_info
        try:
            self.run_id = store.start_run(
                kind="track", parent_run_id=enclosing_run(store),
                model_name=str(info.get("name") or "unnamed")[:255], param_count=info.get("params"),
                precision=info.get("precision"), provider=(info.get("provider") or None),
                threads=info.get("threads"), prompt_tokens=self.prompt_tokens, batch_size=self.batch,
                region=self.grid.region, intensity_g_per_kwh=self.grid.intensity_g_per_kwh,
                intensity_source=self.grid.source, intensity_year=self.grid.year, pue=self.pue,
                price_usd_per_kwh=self.price_usd_per_kwh, collectors=collectors_label[:255],
                extra={"integration": "transformers.generate", "device": info.get("device"),
                       "dtype": info.get("dtype")},
            )
        except BaseException as e:
            self.run_id = None
            store.close()
            if not isinstance(e, Exception):
                raise
            self._store_failed("cannot start a run in the database", e)
            return
        self._store = store

    def _close_store(self, m: Any, status: str, error: str | None, tokens: dict[str, int] | None = None) -> None:
        store, self._store = self._store, None
        if store is None:
            return
        try:
            if self.run_id is not None:
                store.update_run(self.run_id, new_tokens=self._received)
                store.finish_run(self.run_id, m, status=status, error=error, tokens=tokens or {})
                self.runs.append(self.run_id)
        except Exception as e:
            run_id, self.run_id = self.run_id, None
            self._store_failed(f"cannot save run {run_id}", e)
        finally:
            store.close()

    def _store_failed(self, what: str, e: BaseException) -> None:
        if self._store_warned:
            return
        self._store_warned = True
        why = _one_line(str(e)) or type(e).__name__
        self._warn(f"greenprof EnergyStreamer: {what} ({why}); this generation's figures are kept on the "
                   "streamer only (energy_j, j_per_token, co2e_g, ...), not stored")

    def _warn(self, msg: str) -> None:
        import warnings

        from greenprof.meter import GreenprofWarning

        if msg not in self._warnings:
            self._warnings.append(msg)
        warnings.warn(msg, GreenprofWarning, stacklevel=3)

    def _keep_warnings(self) -> None:
        m = self.measurement
        extra = [w for w in self._warnings if w not in m.warnings]
        if extra:
            m.warnings.extend(extra)

    # -- figures (greenprof.accounting) ----------------------------------------------------------
    def _m(self) -> Any:
        if self.measurement is None:
            raise UsageError("no result yet: the figures are ready when generate() has called end()")
        return self.measurement

    @property
    def figures(self) -> Any:
        """Every derived figure of the latest generation (greenprof.accounting.RunFigures): energy
        per phase, J per prompt token, J per generated token, per request, CO2e and cost."""
        from greenprof import accounting

        m = self._m()
        basis = accounting.measurement_basis(m)
        phases, marked = accounting.measurement_phases(m, basis)
        return accounting.run_figures(
            phases, basis=basis, phases_marked=marked, prompt_tokens=(self.prompt_tokens or 0) * self.batch,
            generated_tokens=self.new_tokens * self.batch or None, requests=self.batch,
            intensity_g_per_kwh=self.grid.intensity_g_per_kwh if self.grid is not None else None,
            pue=self.pue, price_usd_per_kwh=self.price_usd_per_kwh)

    @property
    def attribution(self) -> Any:
        """Per-token figures of the latest generation (greenprof.accounting.attribute):
        ``per_token_j`` {domain: [J of token 1, ...]}, ``decode_j_per_token``, durations, tokens/s."""
        from greenprof import accounting

        return accounting.attribute(self._m(), self.prompt_tokens or 1, self.new_tokens, batch=self.batch)

    @property
    def j_per_prompt_token(self) -> float | None:
        return self.figures.j_per_prompt_token

    @property
    def warnings(self) -> list[str]:
        out = list(self.measurement.warnings) if self.measurement is not None else []
        return out + [w for w in self._warnings if w not in out]

    def __repr__(self) -> str:
        state = "running" if self.running else ("done" if self.measurement is not None else "new")
        return f"<greenprof EnergyStreamer model={self.model_info.get('name')!r} run_id={self.run_id} {state}>"
