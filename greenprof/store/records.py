"""What the store's read API returns: runs with their domains, phases and segments."""


from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any




if TYPE_CHECKING:
    pass




# -- records returned by the read API ---------------------------------------------------------
@dataclass
class DomainRecord:
    domain: str
    method: str | None  # measured | estimated | replayed
    source: str | None
    energy_j: float | None  # gross; until the loss when lost_reason is set (partial)
    idle_power_w: float | None
    dynamic_energy_j: float | None
    resolution_s: float | None
    lost_reason: str | None
    attributed_energy_j: float | None = None  # None for runs stored before schema 0003
    share: float | None = None
    scope: str | None = None
    uncertain_reason: str | None = None
    share_note: str | None = None


@dataclass
class SegmentRecord:
    idx: int
    label: str
    kind: str  # setup | prefill | decode | teardown | other
    start_s: float
    duration_s: float
    tokens: int | None
    energy_j: dict[str, float | None] = field(default_factory=dict)
    dynamic_energy_j: dict[str, float | None] = field(default_factory=dict)
    attributed_energy_j: dict[str, float | None] = field(default_factory=dict)


@dataclass
class PhaseSummary:
    """The segments of one kind added up: setup, prefill, decode, teardown or other."""

    kind: str
    segments: int
    duration_s: float
    tokens: int | None
    energy_j: dict[str, float | None] = field(default_factory=dict)
    dynamic_energy_j: dict[str, float | None] = field(default_factory=dict)
    attributed_energy_j: dict[str, float | None] = field(default_factory=dict)


@dataclass
class RunRecord:
    id: int
    batch_id: str | None
    kind: str
    status: str
    started_at: datetime  # aware, UTC
    ended_at: datetime | None
    pid: int | None
    host: str | None
    hardware: dict | None
    hardware_fingerprint: str | None
    software: dict | None
    model_name: str | None
    model_shape: str | None
    param_count: int | None
    precision: str | None
    model_file_hash: str | None
    provider: str | None
    threads: int | None
    prompt_tokens: int | None
    new_tokens: int | None
    batch_size: int | None
    region: str | None
    intensity_g_per_kwh: float | None
    intensity_source: str | None
    intensity_year: int | None
    pue: float | None
    price_usd_per_kwh: float | None
    duration_s: float | None
    sample_hz: float | None
    idle_window_s: float | None
    error: str | None
    warnings: list | None
    extra: dict | None
    collectors: str | None = None
    process_cpu_s: float | None = None
    machine_busy_cpu_s: float | None = None
    other_cpu_share: float | None = None
    concurrent_windows: int | None = None
    parent_run_id: int | None = None
    domains: dict[str, DomainRecord] = field(default_factory=dict)
    phases: dict[str, PhaseSummary] = field(default_factory=dict)  # by segment kind
    segments: list[SegmentRecord] = field(default_factory=list)  # filled by get_run only

    @property
    def energy_j(self) -> dict[str, float | None]:
        """Gross energy per domain."""
        return {d: r.energy_j for d, r in self.domains.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("started_at", "ended_at"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        return d
