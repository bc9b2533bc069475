"""Measure users' own inference code: a decorator and a context manager over the same meter.

    @greenprof.track(model="my-model", tokens=lambda out: len(out.token_ids))
    def answer(question): ...

    with greenprof.track(model="my-model") as t:
        out = pipe(question)
        t.add_tokens(len(out))

Each call (or block) is one run in the store, kind ``track``, with the same columns as
``greenprof measure`` runs. An exception inside marks the run ``failed`` (Ctrl-C/SIGTERM:
``interrupted``) and propagates unchanged.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from greenprof.errors import UsageError


class track:
    """Decorator and context manager. Parameters fall back to config ([tool.greenprof], env)."""

    def __init__(self, model: str | None = None, tokens: Callable[[Any], int] | None = None, *,
                 precision: str | None = None, params: int | None = None, db: str | None = None,
                 collectors: Any = "auto", sample_hz: float | None = None, idle_s: float = 0.0,
                 region: str | None = None, intensity: float | None = None, pue: float | None = None,
                 price_kwh: float | None = None, store: bool = True) -> None:
        if tokens is not None and not callable(tokens):
            raise UsageError("tokens= must be a function of the decorated function's result, e.g. "
                             "tokens=lambda out: len(out)")
        self.model = model
        self._tokens_fn = tokens
        self.precision = precision
        self.params = params
        self._overrides = {"db": db, "region": region, "intensity_g_per_kwh": intensity, "pue": pue,
                           "price_usd_per_kwh": price_kwh, "sample_hz": sample_hz}
        self._collectors = collectors
        self._idle_s = idle_s
        self._use_store = store
        self._reset()

    def _reset(self) -> None:
        self.tokens = 0
        self.run_id: int | None = None
        self.measurement = None
        self.grid = None
        self.pue = 1.0
        self.price_usd_per_kwh = None
        self._meter = None
        self._store = None
        self._active = False
        self._note = None
        self.last: "track | None" = None

    # -- decorator -------------------------------------------------------------------------
    def __call__(self, fn: Callable) -> Callable:
        if not callable(fn):
            raise UsageError("track(...) decorates a function: use @greenprof.track(model=...)")
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                t = self._fresh()
                self.last = t
                with t:
                    result = await fn(*args, **kwargs)
                    t._count_result(result)
                    return result

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = self._fresh()
            self.last = t  # the latest call's tracker: run_id, energy_j, j_per_token, ...
            with t:
                result = fn(*args, **kwargs)
                t._count_result(result)
                return result

        wrapper.greenprof_track = self  # type: ignore[attr-defined]
        return wrapper

    def _fresh(self) -> "track":
        """A tracker per call, so recursive or concurrent calls never share a run."""
        t = track.__new__(track)
        t.__dict__.update({k: v for k, v in self.__dict__.items()})
        t._reset()
        t.model = self.model or None
        return t

    def _count_result(self, result: Any) -> None:
        if self._tokens_fn is None:
            return
        n = self._tokens_fn(result)
        self.add_tokens(n)

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "track":
        if self._active:
            raise UsageError("this track() block is already running: nest a new greenprof.track() instead")
        from greenprof.config import load_settings, resolve_intensity
        from greenprof.meter import Meter

        settings = load_settings(self._overrides)
        self.grid, self._note = resolve_intensity(settings)
        self.pue = settings.pue
        from greenprof import carbon

        self.price_usd_per_kwh = (settings.price_usd_per_kwh if settings.price_usd_per_kwh is not None
                                  else carbon.DEFAULT_PRICE_USD_PER_KWH)
        if self._use_store:
            from greenprof.store import open_store

            self._store = open_store(settings.db, setting="track(db=...)")
            self.run_id = self._store.start_run(
                kind="track", model_name=self.model or "unnamed", precision=self.precision,
                param_count=self.params, region=self.grid.region,
                intensity_g_per_kwh=self.grid.intensity_g_per_kwh, intensity_source=self.grid.source,
                intensity_year=self.grid.year, pue=self.pue, price_usd_per_kwh=self.price_usd_per_kwh,
            )
        self._meter = Meter(collectors=self._collectors, sample_hz=settings.sample_hz, idle_s=self._idle_s)
        try:
            self._meter.start()
        except BaseException:
            self._close_store(status="failed", error="the meter could not start")
            raise
        self._active = True
        return self

    def add_tokens(self, n: int) -> None:
        """Count generated tokens for the per-token figures (call as often as you like)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"add_tokens() takes a whole number >= 0 (got {n!r})")
        self.tokens += n

    def mark(self, label: str) -> None:
        """Close a segment (e.g. "prefill", "token-1") inside the tracked block."""
        if not self._active:
            raise UsageError("mark() works inside a running `with greenprof.track(...)` block")
        self._meter.mark(label)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._active = False
        self._meter.__exit__(exc_type, exc, tb)
        self.measurement = self._meter.measurement
        status = self.measurement.status
        error = None if exc_type is None or status == "interrupted" else f"{exc_type.__name__}: {exc}"
        self._close_store(status=status, error=error)
        return False  # the user's exception propagates unchanged

    def _close_store(self, status: str, error: str | None) -> None:
        if self._store is None:
            return
        try:
            if self.run_id is not None:
                self._store.update_run(self.run_id, new_tokens=self.tokens or None)
                self._store.finish_run(self.run_id, self.measurement, status=status, error=error,
                                       tokens={})
        finally:
            self._store.close()
            self._store = None

    # -- results ---------------------------------------------------------------------------
    @property
    def energy_j(self) -> float:
        """Total gross joules over all domains."""
        return self._m().total_energy_j

    @property
    def j_per_token(self) -> float | None:
        return self.energy_j / self.tokens if self.tokens else None

    @property
    def co2e_g(self) -> float:
        from greenprof import carbon

        return carbon.co2e_g(self.energy_j, self.grid.intensity_g_per_kwh, self.pue)

    @property
    def cost_usd(self) -> float:
        from greenprof import carbon

        return carbon.cost_usd(self.energy_j, self.price_usd_per_kwh, self.pue)

    def _m(self):
        if self.measurement is None:
            raise UsageError("no result yet: figures are ready when the tracked block or call ends")
        return self.measurement

    def __repr__(self) -> str:
        state = "running" if self._active else ("done" if self.measurement else "new")
        return f"<greenprof.track model={self.model!r} run_id={self.run_id} {state}>"
