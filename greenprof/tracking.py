"""Measure users' own inference code: a decorator and a context manager over the same meter.

    @greenprof.track(model="my-model", tokens=lambda out: len(out.token_ids))
    def answer(question): ...

    @greenprof.track(model="my-model", tokens=lambda chunk: 1)     # one token per yielded chunk
    def stream(question):
        for token in generate(question):
            yield token

    with greenprof.track(model="my-model") as t:
        out = pipe(question)
        t.add_tokens(len(out))

Each call (or block) is one run in the store, kind ``track``, with the same columns as
``greenprof measure`` runs. The rules:

* **What is measured.** A plain function: the call. A coroutine function: the whole ``await``.
  A generator or async generator function: the whole iteration. Its run opens at the first
  ``next()`` / ``anext()`` (a generator that is never iterated is neither measured nor stored)
  and closes when the generator is exhausted (``completed``), closed early by its consumer
  (``break``, ``close()``, garbage collection: ``completed``, with the tokens counted so far),
  or raises (``failed``; Ctrl-C and task cancellation: ``interrupted``). Values sent with
  ``send()`` / ``asend()`` and exceptions thrown with ``throw()`` / ``athrow()`` reach the
  generator unchanged, and its ``return`` value too.
* **Tokens.** ``tokens=`` is a function of a result: of the return value (plain and coroutine
  functions), or of *each yielded item* for generator functions, whose results are summed
  (``tokens=lambda chunk: 1`` counts streamed chunks, ``tokens=lambda chunk: len(chunk.ids)``
  their tokens). Without ``tokens=`` no tokens are counted. It must return a whole number >= 0:
  an ``int`` or any integer type (``numpy.int64``, anything with ``__index__``); a ``bool`` or a
  float (even ``12.0``), a string or a negative number is refused. A ``tokens=`` that raises or
  returns something else never fails the call: the result comes back unchanged, the run is
  stored with its token count unknown (``t.tokens`` is None) and a :class:`GreenprofWarning`
  (also saved in the run's warnings) says what went wrong.
* **Failures.** An exception inside marks the run ``failed`` (Ctrl-C/SIGTERM: ``interrupted``)
  and propagates unchanged. A store that cannot be used (bad ``db=`` URL, read-only folder,
  database locked past the timeout, server down, ...) never fails the call either: the
  figures stay on the tracker (``t.energy_j`` ...), ``t.run_id`` is None, and one
  :class:`GreenprofWarning` says what failed. Mistakes in calls on the tracker
  (``t.mark(123)``, ``t.add_tokens(-1)``) raise :class:`UsageError` at the call.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import reprlib
import sys
from typing import Any, Callable

from greenprof.errors import UsageError

_RESERVED_LABELS = ("start", "end")  # the meter's own marks


def _whole(n: Any) -> int | None:
    """``n`` as a token count (an int >= 0), or None when it is not one. Integer types of other
    libraries (numpy) count; bool and float (even 12.0) do not."""
    if isinstance(n, (bool, float)):
        return None
    try:
        v = operator.index(n)
    except TypeError:
        return None
    return v if v >= 0 else None


def _one_line(text: str) -> str:
    lines = [s.strip() for s in str(text).strip().splitlines() if s.strip()]
    return lines[0] if lines else ""


class RunFigures:
    """The figures every tracker of a run shows (track blocks, EnergyStreamer), all from its
    ``figures`` (greenprof.accounting.RunFigures) and its measurement (``_m()``)."""

    @property
    def energy_j(self) -> float:
        """Joules charged to this run (its share of the process's energy), summed over domains."""
        return float(self.figures.energy_j)

    @property
    def gross_energy_j(self) -> float:
        """Joules the counters saw over the run (whole devices), summed over domains."""
        return float(self._m().total_energy_j)

    @property
    def j_per_token(self) -> float | None:
        """Decode J per generated token (greenprof.accounting): without phase marks the whole run
        is its decode phase; None without tokens (or with an unknown count)."""
        return self.figures.j_per_token

    @property
    def co2e_g(self) -> float | None:
        """Grams CO2e of ``energy_j`` at the run's grid intensity and PUE."""
        return self.figures.co2e_g

    @property
    def cost_usd(self) -> float | None:
        """Cost of ``energy_j`` at the run's price per kWh and PUE."""
        return self.figures.cost_usd

    @property
    def method(self) -> str:
        """How the energy was found: ``measured``, ``estimated`` or ``replayed`` (or a mix, e.g.
        ``measured+estimated``), as in `greenprof runs`."""
        from greenprof.accounting import collapse_methods

        return collapse_methods(self._m().method)

    @property
    def basis(self) -> str:
        """``attributed`` (this run's share of shared counters) or ``gross`` (whole devices)."""
        return self.figures.basis

    @property
    def partial(self) -> bool:
        """A domain was lost mid-run: its energy until then is counted, the rest is missing."""
        return bool(self._m().lost)

    @property
    def uncertain(self) -> dict[str, str]:
        """{domain: reason} where a figure may be wrong: a counter may have missed a wrap, or did
        not update at all during the run (empty when none)."""
        return dict(self._m().uncertain)


def stored_as(meter: Any, store: Any, run_id: int) -> None:
    """Say that ``meter``'s window is stored as run ``run_id`` in ``store`` (see enclosing_run)."""
    meter._stored_run = (store.url, run_id)


def enclosing_run(store: Any) -> int | None:
    """The stored run, in the same database as ``store``, of the nearest running window around
    the current context (a ``track`` block or a streamer this one is nested in), or None. Its
    energy includes the nested run's: stored as ``parent_run_id``, so a sum over runs can count
    each joule once."""
    from greenprof.meter import _CURRENT

    w = _CURRENT.get()
    while w is not None:
        ref = getattr(w, "_stored_run", None)
        if ref is not None and w._state == "running" and ref[0] == store.url:
            return ref[1]
        w = w._parent
    return None


class track(RunFigures):
    """Decorator and context manager measuring one run per call or block.

    Parameters (each falls back to config: ``[tool.greenprof]``, ``GREENPROF_*``):

    model, precision, params:
        What is being run, stored with the run (``model`` defaults to ``"unnamed"``).
    tokens:
        A function of the result giving its token count; for generator functions, of each
        yielded item, summed (see the module docs). In a ``with`` block, call
        :meth:`add_tokens` instead.
    db:
        A SQLAlchemy URL or a file path (default ``GREENPROF_DB``, else ``./greenprof.db``).
    collectors:
        Which energy domains to measure. ``"auto"`` (default): every measured source on this
        machine, else the CPU estimate. Or choose them explicitly: a list of domain names
        (``collectors=["cpu-package-0"]``, ``["gpu-0", "cpu-package-0"]``) or a comma-separated
        string (``"cpu-estimate"``); ``greenprof sensors`` lists the domains here.
    sample_hz, idle_s:
        The background sampler's rate, and seconds of quiet before the work for an idle baseline.
    region, intensity, pue, price_kwh:
        Grid region, a market-based intensity (g CO2e/kWh), PUE and price per kWh for the figures.
    store:
        False: measure only, store nothing (``t.run_id`` stays None).

    Figures, ready when the call or block ends: ``energy_j`` (joules charged to this run: its
    share of the process's energy), ``gross_energy_j`` (what the counters saw), ``tokens``,
    ``j_per_token``, ``co2e_g``, ``cost_usd``, ``run_id``, ``measurement``, ``warnings``; and
    what they are: ``method``, ``basis``, ``partial``, ``uncertain`` (as in `greenprof runs`). On a
    decorated function, ``fn.greenprof_track.last`` is the tracker of the call that last started
    or ended: once a call returns, that call (a recursive function's outermost one), unless
    another started or ended since.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # ``@greenprof.track`` without parentheses: the function arrives as the only argument
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], str):
            return cls()(args[0])
        return super().__new__(cls)

    def __init__(self, model: str | None = None, tokens: Callable[[Any], int] | None = None, *,
                 precision: str | None = None, params: int | None = None, db: str | None = None,
                 collectors: Any = "auto", sample_hz: float | None = None, idle_s: float = 0.0,
                 region: str | None = None, intensity: float | None = None, pue: float | None = None,
                 price_kwh: float | None = None, store: bool = True) -> None:
        if tokens is not None and not callable(tokens):
            raise UsageError("tokens= must be a function of the decorated function's result, e.g. "
                             "tokens=lambda out: len(out)")
        if model is not None and not (isinstance(model, str) and model.strip() and len(model) <= 255):
            raise UsageError(f"model= names the model in text of 1 to 255 characters, e.g. "
                             f"model=\"llama-3-8b\" (got {reprlib.repr(model)})")
        if precision is not None and not (isinstance(precision, str) and precision.strip()
                                          and len(precision) <= 16):
            raise UsageError(f"precision= is a short text of 1 to 16 characters such as \"fp16\" or "
                             f"\"int8\" (got {reprlib.repr(precision)})")
        if params is not None and _whole(params) is None:
            raise UsageError(f"params= is the model's parameter count, a whole number >= 0 such as "
                             f"params=135_000_000 (got {reprlib.repr(params)})")
        self.model = model
        self._tokens_fn = tokens
        self.precision = precision
        self.params = _whole(params) if params is not None else None
        self._overrides = {"db": db, "region": region, "intensity_g_per_kwh": intensity, "pue": pue,
                           "price_usd_per_kwh": price_kwh, "sample_hz": sample_hz}
        self._collectors = collectors
        self._idle_s = idle_s
        self._use_store = store
        self._reset()
        self.last: "track | None" = None
        self._owner: "track | None" = None  # a call's tracker: the decorated function's, told at the end

    def _reset(self) -> None:
        """Per-run state (a fresh tracker, or a ``with`` block entered again)."""
        self._tokens = 0
        self._counted = False  # tokens were counted (add_tokens, tokens=), zero included
        self._tokens_unknown = False
        self.run_id: int | None = None
        self.measurement = None
        self.grid = None
        self.pue = 1.0
        self.price_usd_per_kwh = None
        self._meter = None
        self._store = None
        self._active = False
        self._note = None
        self._warnings: list[str] = []
        self._store_warned = False
        self._last_mark: str | None = None

    # -- decorator -------------------------------------------------------------------------
    def __call__(self, fn: Callable) -> Callable:
        if not callable(fn):
            raise UsageError("track(...) decorates a function: use @greenprof.track(model=...)")
        if inspect.isasyncgenfunction(fn):
            wrapper = self._wrap_async_generator(fn)
        elif inspect.isgeneratorfunction(fn):
            wrapper = self._wrap_generator(fn)
        elif inspect.iscoroutinefunction(fn):
            wrapper = self._wrap_coroutine(fn)
        else:
            wrapper = self._wrap_function(fn)
        wrapper.greenprof_track = self  # type: ignore[attr-defined]
        return wrapper

    def _wrap_function(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = self._fresh()
            with t:
                result = fn(*args, **kwargs)
                t._count(result)
            return result

        return wrapper

    def _wrap_coroutine(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            t = self._fresh()
            with t:
                result = await fn(*args, **kwargs)
                t._count(result)
            return result

        return wrapper

    def _wrap_generator(self, fn: Callable) -> Callable:
        # The wrapper is itself a generator function (inspect.isgeneratorfunction stays true for
        # frameworks that check it), so its body, and the run, start at the first next().
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            gen = fn(*args, **kwargs)
            with self._fresh()._over_iteration() as t:
                result = yield from t._relay(gen)
            return result

        return wrapper

    def _relay(self, gen):
        """``yield from gen`` (PEP 380: send, throw and close pass through), counting tokens of
        every yielded item on the way."""
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        while True:
            self._count(item)
            self._leave()
            try:
                sent = yield item
            except GeneratorExit:
                self._resume()
                gen.close()
                raise
            except BaseException as exc:
                self._resume()
                try:
                    item = gen.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                self._resume()
                try:
                    item = gen.send(sent)
                except StopIteration as stop:
                    return stop.value

    def _wrap_async_generator(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            agen = fn(*args, **kwargs)
            with self._fresh()._over_iteration() as t:
                try:
                    item = await agen.__anext__()
                except StopAsyncIteration:
                    pass
                else:
                    while True:
                        t._count(item)
                        t._leave()
                        try:
                            sent = yield item
                        except GeneratorExit:
                            t._resume()
                            await agen.aclose()
                            raise
                        except BaseException as exc:
                            t._resume()
                            try:
                                item = await agen.athrow(exc)
                            except StopAsyncIteration:
                                break
                        else:
                            t._resume()
                            try:
                                item = await agen.asend(sent)
                            except StopAsyncIteration:
                                break

        return wrapper

    @contextlib.contextmanager
    def _over_iteration(self):
        """This tracker's run over a generator's whole iteration (sync or async): a consumer
        that stops early (GeneratorExit) closes a complete run; anything else raised ends it as
        ``__exit__`` says (failed, or interrupted) and propagates.

        A generator runs in its consumer's context, and the run's window would stay the current
        one there while the generator is suspended: a window the consumer opens meanwhile (a
        second tracked generator consumed in turn, a ``with track()`` block) would then nest
        inside it instead of splitting the energy with it, and both would be charged the same
        joules. So the window is current only while the generator's own code runs: each
        ``yield`` gives the consumer back its own current window (:meth:`_leave`), each
        resumption takes the run's back (:meth:`_resume`)."""
        from greenprof.meter import _CURRENT

        self._outside = _CURRENT.get()
        self._inside = None
        self.__enter__()
        try:
            yield self
        except GeneratorExit:
            self.__exit__(None, None, None)
            raise
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        else:
            self.__exit__(None, None, None)
        finally:
            _CURRENT.set(self._outside)

    def _leave(self) -> None:
        """The generator yields: its consumer's current window is current again."""
        from greenprof.meter import _CURRENT

        self._inside = _CURRENT.get()
        _CURRENT.set(self._outside)
        if self._meter is not None:
            self._meter._switch(running=False)

    def _resume(self) -> None:
        """The generator runs again (in whichever context resumed it): its window is current."""
        from greenprof.meter import _CURRENT

        self._outside = _CURRENT.get()
        _CURRENT.set(self._inside)
        if self._meter is not None:
            self._meter._switch(running=True)

    def _fresh(self) -> "track":
        """A tracker per call, so recursive or concurrent calls never share a run; it becomes
        ``self.last`` (its run_id, energy_j, j_per_token, ...) as the call starts, and again as
        it ends (see __exit__): only the start left a recursive function's ``last`` on its
        innermost call, not the call the user made."""
        t = track.__new__(track)
        t.__dict__.update(self.__dict__)
        t._reset()
        t.last = None
        t._owner = self
        t.model = self.model or None
        self.last = t
        return t

    # -- tokens ----------------------------------------------------------------------------
    def _count(self, value: Any) -> None:
        """Apply ``tokens=`` to a result (or a yielded item); never raises an Exception."""
        if self._tokens_fn is None or self._tokens_unknown:
            return
        try:
            n = self._tokens_fn(value)
        except Exception as e:
            self._lose_tokens(f"tokens= raised {type(e).__name__}: {_one_line(str(e))}")
            return
        k = _whole(n)
        if k is None:
            self._lose_tokens(f"tokens= returned {reprlib.repr(n)} ({type(n).__name__}), "
                              f"not a whole number >= 0")
            return
        self._tokens += k
        self._counted = True

    def _lose_tokens(self, why: str) -> None:
        self._tokens_unknown = True
        self._warn(f"greenprof.track(model={self.model!r}): {why}; the run's token count is "
                   f"unknown (the result is returned unchanged)")

    def add_tokens(self, n: int) -> None:
        """Count generated tokens for the per-token figures (call as often as you like, inside
        the running block: the run's count is stored when the block ends)."""
        if not self._active:
            raise UsageError("add_tokens() works inside a running `with greenprof.track(...)` block: "
                             "count the tokens before the block ends"
                             + (" (this run has ended)" if self.measurement is not None else ""))
        k = _whole(n)
        if k is None:
            raise UsageError(f"add_tokens() takes a whole number >= 0 (got {n!r})")
        self._tokens += k
        self._counted = True

    @property
    def tokens(self) -> int | None:
        """Tokens counted so far; once the run has ended and none were counted, the tokens its
        own marks say (``mark("token-N")``, the runner's ``meter=``). None when ``tokens=``
        failed (the count is unknown), or when the run ended with no token counted nor marked
        (as the store keeps it: not counted is not zero; ``add_tokens(0)`` is 0)."""
        if self._tokens_unknown:
            return None
        return self._tokens if self.measurement is None else self._generated()

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "track":
        if self._active:
            raise UsageError("this track() block is already running: nest a new greenprof.track() instead")
        self._reset()  # a block object entered again starts a new run
        from greenprof.config import load_settings, resolve_intensity
        from greenprof.meter import Meter

        settings = load_settings(self._overrides)
        self.grid, self._note = resolve_intensity(settings)
        self.pue = settings.pue
        from greenprof import carbon

        self.price_usd_per_kwh = (settings.price_usd_per_kwh if settings.price_usd_per_kwh is not None
                                  else carbon.DEFAULT_PRICE_USD_PER_KWH)
        if self._use_store:
            self._open_store(settings.db)
        # concurrent track() blocks split the process's energy among themselves (each joule once)
        self._meter = Meter(collectors=self._collectors, sample_hz=settings.sample_hz,
                            idle_s=self._idle_s, split=True)
        if self._store is not None and self.run_id is not None:
            stored_as(self._meter, self._store, self.run_id)
        try:
            self._meter.start()
        except BaseException as e:
            self._close_store(status="failed", error=f"the meter could not start: {type(e).__name__}: {e}")
            raise
        self._active = True
        return self

    def _open_store(self, db: Any) -> None:
        """Open the store and start the run; a store that cannot be used only warns."""
        from greenprof.store import shared_store

        try:
            store = shared_store(db, setting="track(db=...)")
        except Exception as e:
            self._store_failed("cannot open the database", e)
            return
        try:
            self.run_id = store.start_run(
                kind="track", parent_run_id=enclosing_run(store),
                model_name=self.model or "unnamed", precision=self.precision,
                param_count=self.params, region=self.grid.region,
                intensity_g_per_kwh=self.grid.intensity_g_per_kwh, intensity_source=self.grid.source,
                intensity_year=self.grid.year, pue=self.pue, price_usd_per_kwh=self.price_usd_per_kwh,
            )
        except BaseException as e:
            self.run_id = None
            if not isinstance(e, Exception):
                raise
            self._store_failed("cannot start a run in the database", e)
            return
        self._store = store

    def mark(self, label: str) -> None:
        """Close a segment (e.g. "prefill", "token-1") inside the tracked block."""
        if not self._active:
            raise UsageError("mark() works inside a running `with greenprof.track(...)` block")
        if not isinstance(label, str) or not label.strip() or label in _RESERVED_LABELS:
            raise UsageError(f"mark() takes a non-empty text label such as 'prefill' or 'token-1', "
                             f"other than 'start'/'end' (got {label!r})")
        self._meter.mark(label)
        self._last_mark = label

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._active = False
        try:
            auto_decode = self._last_mark == "prefill" and bool(self._tokens or self._tokens_unknown)
            if auto_decode:
                # tokens counted after mark("prefill") with no decode marks: the work from that
                # mark to the end of the block is their decode (not a teardown, which would leave
                # the tokens with no energy and J/token at zero)
                self._meter.mark("decode")
            self._meter.__exit__(exc_type, exc, tb)
            self.measurement = self._meter.measurement
            if auto_decode and self.tokens:
                self._decode_holds(self.tokens)
        except BaseException as e:
            self._close_store(status="failed", error=f"the meter could not stop: {type(e).__name__}: {e}")
            raise
        status = self.measurement.status
        error = None if exc_type is None or status == "interrupted" else f"{exc_type.__name__}: {exc}"
        self._keep_warnings()
        self._close_store(status=status, error=error)
        if self._owner is not None:
            self._owner.last = self
        return False  # the user's exception propagates unchanged

    def _decode_holds(self, n: int) -> None:
        """The decode segment added at exit holds the ``n`` counted tokens (a merged decode
        segment, as the store and every figure read it), not the one a ``decode`` label alone
        would mean."""
        import dataclasses

        m = self.measurement
        segs = list(m.segments)
        for i in range(len(segs) - 1, -1, -1):
            if segs[i].label == "decode":
                segs[i] = dataclasses.replace(segs[i], tokens=n)
                break
        try:
            m.segments = segs
        except AttributeError:  # an immutable measurement
            self.measurement = dataclasses.replace(m, segments=segs)

    def _generated(self) -> int | None:
        """Generated tokens: those counted (``tokens=``, ``add_tokens``), else those the run's
        own token marks say (``mark("token-N")``, or the runner's ``meter=`` marks); None when
        neither counted any or the count is unknown."""
        if self._tokens_unknown:
            return None
        if self._counted:  # add_tokens / tokens= ran: their count, zero included
            return self._tokens
        from greenprof.accounting import generated_tokens

        m = self.measurement
        return (generated_tokens(m.segments) or None) if m is not None else None

    def _keep_warnings(self) -> None:
        """Add the tracker's warnings (a failing tokens=) to the measurement, so they are stored,
        and raise the measurement's own (other processes' load, a lost domain, a possible missed
        counter wrap) as :class:`GreenprofWarning` too, so they reach stderr as `measure`'s do."""
        m = self.measurement
        raised = getattr(self._meter, "_raised", ())
        for w in m.warnings:
            if w not in self._warnings and w not in raised:
                self._warn(f"greenprof.track(model={self.model!r}): {w}", keep=False)
        extra = [w for w in self._warnings if w not in m.warnings]
        if extra:
            try:
                m.warnings.extend(extra)
            except AttributeError:  # an immutable sequence
                import dataclasses

                self.measurement = dataclasses.replace(m, warnings=[*m.warnings, *extra])

    def _close_store(self, status: str, error: str | None) -> None:
        store, self._store = self._store, None
        if store is None:
            return
        try:
            if self.run_id is not None:
                n = self._generated()
                if n is not None:  # counted, zero included (not counted: unknown, as stored)
                    store.update_run(self.run_id, new_tokens=n)
                store.finish_run(self.run_id, self.measurement, status=status, error=error, tokens={})
        except Exception as e:
            run_id, self.run_id = self.run_id, None
            self._store_failed(f"cannot save run {run_id}", e)

    def _store_failed(self, what: str, e: BaseException) -> None:
        """One warning per run: the store failed, the figures stay on the tracker."""
        if self._store_warned:
            return
        self._store_warned = True
        why = _one_line(str(e)) or type(e).__name__
        if not isinstance(e, Exception) or type(e).__module__.split(".")[0] != "greenprof":
            why = f"{type(e).__name__}: {why}"
        self._warn(f"greenprof.track(model={self.model!r}): {what} ({why}); this run's figures "
                   f"are kept on the tracker only (energy_j, j_per_token, co2e_g, ...), not stored")

    def _warn(self, msg: str, keep: bool = True) -> None:
        import warnings

        from greenprof.meter import GreenprofWarning

        if keep and msg not in self._warnings:
            self._warnings.append(msg)
        # point at the user's code: the first frame outside this file
        level, f = 1, sys._getframe(0)
        while f is not None and f.f_code.co_filename == __file__:
            f = f.f_back
            level += 1
        warnings.warn(msg, GreenprofWarning, stacklevel=level)

    # -- results ---------------------------------------------------------------------------
    @property
    def figures(self):
        """Every derived figure of this run (greenprof.accounting.RunFigures, attributed basis):
        the same definitions as `greenprof runs` and `show` use for the stored run."""
        from greenprof import accounting

        m = self._m()
        basis = accounting.measurement_basis(m)
        phases, marked = accounting.measurement_phases(m, basis)
        return accounting.run_figures(
            phases, basis=basis, phases_marked=marked, generated_tokens=self._generated(),
            intensity_g_per_kwh=self.grid.intensity_g_per_kwh if self.grid is not None else None,
            pue=self.pue, price_usd_per_kwh=self.price_usd_per_kwh)

    @property
    def warnings(self) -> list[str]:
        """What the meter and the tracker warned about for this run."""
        out = list(self.measurement.warnings) if self.measurement is not None else []
        return out + [w for w in self._warnings if w not in out]

    def _m(self):
        if self.measurement is None:
            raise UsageError("no result yet: figures are ready when the tracked block or call ends")
        return self.measurement

    def __repr__(self) -> str:
        state = "running" if self._active else ("done" if self.measurement else "new")
        return f"<greenprof.track model={self.model!r} run_id={self.run_id} {state}>"
