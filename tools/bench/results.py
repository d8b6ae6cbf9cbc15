"""What one bench run measured: per embedder (:class:`Variant`) and as a whole (:class:`BenchRun`).

Plain records between the measuring stages and the report; nothing here measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tools.bench.common import Models
from tools.bench.cpu import CpuInfo
from tools.bench.daemon import DaemonResult
from tools.bench.fleet import FleetResult
from tools.bench.identify import IdResult
from tools.bench.peer import PeerResult
from tools.bench.stages import StageResult
from tools.bench.targets import Target


@dataclass
class Variant:
    """One embedder's results: stages per runtime and thread count, matching, identification."""

    models: Models
    stages: list[StageResult]
    match_ms: dict[int, float]
    size_ratio: float
    ident: IdResult | None

    @property
    def label(self) -> str:
        return self.models.label


@dataclass
class BenchRun:
    """Everything one run measured, for the text and the JSON report."""

    machine: dict[str, Any]
    where: str
    camera: tuple[int, int]
    frames: int
    runtimes: list[str]
    missing: list[str]
    decode_ms: float
    variants: list[Variant]
    peer: PeerResult
    daemon: DaemonResult
    targets: list[Target]
    soak: bool
    cpu: CpuInfo
    wall_s: float = 0.0
    fleet: FleetResult | None = None
