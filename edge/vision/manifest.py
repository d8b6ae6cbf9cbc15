"""Model manifests: the JSON that travels with every model file.

A manifest sits beside its model as ``<model>.json`` (for
``facenet_int8.tflite``: ``facenet_int8.json``) and states what the device
must know to use the model: input shape/dtype and quantisation, the
preprocessing, the alignment template, the embedding size, the model's
sha256, and the calibrated open-set parameters. A model whose hash, input
shape or dtype disagrees with its manifest is refused
(:class:`~edge.errors.ManifestMismatch`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.errors import ManifestMismatch, ModelError
from edge.files import write_atomic

FORMAT = "facegate-manifest/1"


@dataclass(frozen=True)
class RateTable:
    """Error rates of one kind of comparison at a list of thresholds (rows in increasing threshold).

    Row ``i``: at ``threshold[i]`` the nominal rate is ``rate[i]`` and
    ``count[i]`` of the ``n`` calibration distances are errors there, so the
    empirical rate is ``count[i] / n <= rate[i]``.

    * FAR table (impostor distances, accepted when ``d < t``):
      ``count[i] = #{d < threshold[i]}``; rates increase with the threshold.
    * FRR table (genuine distances, rejected when ``d >= t``):
      ``count[i] = #{d >= threshold[i]}``; rates decrease with the threshold.
    """

    n: int
    rate: tuple[float, ...]
    threshold: tuple[float, ...]
    count: tuple[int, ...]

    def __post_init__(self) -> None:
        k = len(self.rate)
        if k == 0 or len(self.threshold) != k or len(self.count) != k:
            raise ValueError("a rate table needs rows of equal length (rate, threshold, count)")
        if self.n < 1:
            raise ValueError(f"a rate table needs n >= 1, got {self.n}")
        for r, t, c in zip(self.rate, self.threshold, self.count, strict=True):
            if not (0.0 < r <= 1.0 and math.isfinite(t) and 0.0 <= t <= 2.0 and 0 <= c <= self.n):
                raise ValueError(f"a rate table row is out of range: rate {r}, threshold {t}, {c}")
        if any(b < a for a, b in zip(self.threshold, self.threshold[1:], strict=False)):
            raise ValueError("a rate table's thresholds must not decrease")

    def empirical(self, i: int) -> float:
        """``count[i] / n``: the measured rate at row ``i``."""
        return self.count[i] / self.n

    def to_json(self) -> dict[str, object]:
        return {
            "n": self.n,
            "rate": list(self.rate),
            "threshold": list(self.threshold),
            "count": list(self.count),
        }

    @classmethod
    def from_json(cls, d: object) -> RateTable:
        """Parse :meth:`to_json`'s dict; ValueError/TypeError/KeyError when malformed."""
        if not isinstance(d, dict):
            raise TypeError("a rate table must be an object")
        return cls(
            n=int(d["n"]),
            rate=tuple(float(x) for x in d["rate"]),
            threshold=tuple(float(x) for x in d["threshold"]),
            count=tuple(int(x) for x in d["count"]),
        )


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and (for quantised tensors) the affine parameters."""

    shape: tuple[int, ...]
    dtype: str  # "int8" | "uint8" | "float32"
    scale: float = 0.0  # 0 for float tensors
    zero_point: int = 0


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's float input: ``(rgb - mean) / std``."""

    size: tuple[int, int]  # (width, height)
    mean: float = 127.5
    std: float = 128.0
    color: str = "RGB"  # channel order the model expects


@dataclass(frozen=True)
class Calibration:
    """Open-set parameters: threshold, margin, the confidence curve and the rate tables.

    ``confidence(d) = 1 / (1 + exp((d - conf_midpoint) / conf_scale))``.
    ``source`` says where they came from ("default" or the calibration run).
    ``far_table``/``frr_table`` (:class:`RateTable`) are the
    impostor and genuine distance quantiles from which the device picks the
    threshold for its gallery size; a manifest without them (older
    calibrations) keeps the single ``threshold``.
    """

    threshold: float
    margin: float
    conf_midpoint: float
    conf_scale: float
    source: str = "default"
    far_table: RateTable | None = None
    frr_table: RateTable | None = None


@dataclass(frozen=True)
class Manifest:
    """Everything a model needs to be used correctly on the device."""

    kind: str  # "embedder" | "detector"
    name: str
    file: str  # model file name, relative to the manifest
    sha256: str
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    quantization: str  # "int8" | "float32"
    embedding_size: int = 0
    alignment: str = ""  # template name for embedders ("facenet160")
    calibration: Calibration | None = None
    source: dict[str, Any] = field(default_factory=dict)
    tool_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    @property
    def model_path(self) -> Path:
        """The model file, resolved next to the manifest."""
        base = self.path.parent if self.path is not None else Path.cwd()
        return base / self.file

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d["format"] = FORMAT
        return d

    def with_calibration(self, cal: Calibration) -> Manifest:
        return replace(self, calibration=cal)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_path_for(model_or_manifest: Path) -> Path:
    """``x.tflite`` -> ``x.json``; a ``.json`` path is returned as is."""
    p = Path(model_or_manifest)
    return p if p.suffix == ".json" else p.with_suffix(".json")


def _tensor(d: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        shape=tuple(int(x) for x in d["shape"]),
        dtype=str(d["dtype"]),
        scale=float(d.get("scale", 0.0)),
        zero_point=int(d.get("zero_point", 0)),
    )


def _table(d: Any) -> RateTable | None:
    """A calibration rate table, or None when absent (manifests from before the tables)."""
    return None if d is None else RateTable.from_json(d)


def calibration_from_dict(cal: dict[str, Any]) -> Calibration:
    """A manifest's ``calibration`` block; KeyError/TypeError/ValueError when malformed."""
    return Calibration(
        threshold=float(cal["threshold"]),
        margin=float(cal["margin"]),
        conf_midpoint=float(cal["conf_midpoint"]),
        conf_scale=float(cal["conf_scale"]),
        source=str(cal.get("source", "")),
        far_table=_table(cal.get("far_table")),
        frr_table=_table(cal.get("frr_table")),
    )


def from_dict(d: dict[str, Any], path: Path | None = None) -> Manifest:
    """Build a :class:`Manifest` from parsed JSON; a missing key is a ModelError."""
    where = str(path) if path else "manifest"
    try:
        if d.get("format") != FORMAT:
            raise ModelError(f"{where}: unsupported manifest format {d.get('format')!r}")
        pre = d["preprocessing"]
        cal = d.get("calibration")
        return Manifest(
            kind=str(d["kind"]),
            name=str(d["name"]),
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            input=_tensor(d["input"]),
            output=_tensor(d["output"]),
            preprocessing=Preprocessing(
                size=(int(pre["size"][0]), int(pre["size"][1])),
                mean=float(pre.get("mean", 127.5)),
                std=float(pre.get("std", 128.0)),
                color=str(pre.get("color", "RGB")),
            ),
            quantization=str(d["quantization"]),
            embedding_size=int(d.get("embedding_size", 0)),
            alignment=str(d.get("alignment", "")),
            calibration=None if cal is None else calibration_from_dict(cal),
            source=dict(d.get("source", {})),
            tool_version=str(d.get("tool_version", "")),
            extra=dict(d.get("extra", {})),
            path=path,
        )
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ModelError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None


def load_manifest(model_or_manifest: Path | str) -> Manifest:
    """Read the manifest of a model (given the model path or the manifest path)."""
    mp = manifest_path_for(Path(model_or_manifest))
    if not mp.is_file():
        raise ModelError(
            f"no manifest at {mp}: a model always travels with its manifest "
            "(run `python -m tools.models build`)"
        )
    try:
        data = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{mp}: unreadable manifest ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{mp}: manifest is not a JSON object")
    return from_dict(data, path=mp.resolve())


def verify_file(manifest: Manifest) -> Path:
    """Check the model file exists and its sha256 matches; return its path."""
    mp = manifest.model_path
    if not mp.is_file():
        raise ModelError(f"model file {mp} is missing (run `python -m tools.models build`)")
    digest = sha256_file(mp)
    if digest != manifest.sha256:
        raise ManifestMismatch(
            f"{mp}: sha256 {digest[:12]}... does not match its manifest "
            f"({manifest.sha256[:12]}...); refusing a model that is not the one described"
        )
    return mp


def write_json_atomic(path: Path | str, data: Any, what: str = "JSON file") -> None:
    """``data`` as indented JSON (key order kept), written with :func:`edge.files.write_atomic`.

    0644: manifests and reports are public metadata the service user must
    read. Any OSError becomes one :class:`~edge.errors.ModelError` line.
    """
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    write_atomic(path, text.encode("utf-8"), what, ModelError, mode=0o644)


def save_manifest(manifest: Manifest, path: Path | None = None) -> Path:
    """Write a manifest atomically (to ``path`` or where it was loaded from)."""
    target = path or manifest.path
    if target is None:
        raise ModelError("save_manifest: no path given")
    write_json_atomic(Path(target), manifest.to_dict(), "manifest")
    return Path(target)
