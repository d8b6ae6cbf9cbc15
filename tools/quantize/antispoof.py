"""A user's anti-spoofing CNN (e.g. MiniFASNet) to int8: ``python -m tools.quantize M --antispoof``.

    python -m tools.quantize minifasnet.keras --antispoof --calibration FACES \\
        --input-size 80 --crop-scale 2.7 --mean 0 --std 1 --color BGR --live-index 1 \\
        --name minifasnet

No anti-spoofing weights ship with facegate (none is in a registry package).
The calibration crops are made the way the device will make them
(:func:`edge.liveness.texture.crop_box`: the detector's face box grown
``--crop-scale`` times, square, resized to the input), and the manifest
(``kind: "antispoof"``) records that preprocessing exactly: the crop scale,
the colour order, the value range (``(pixel - mean) / std``), the output
(``softmax`` over classes or one ``sigmoid`` logit) and the live class. The
report gives how far the int8 model's live probability is from the float
model's on those crops.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import FacegateError, ModelError, NoFaceError
from edge.types import Image
from edge.vision.manifest import (
    Manifest,
    Preprocessing,
    save_manifest,
    sha256_file,
    write_json_atomic,
)
from tools.quantize.common import TOOL_VERSION
from tools.quantize.convert import convert_float, convert_int8, preprocess
from tools.quantize.inspect import io_specs
from tools.quantize.source import SourceModel, load_source, model_format

OUTPUTS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class AntispoofConfig:
    """One conversion: the model, its preprocessing, the calibration photos."""

    model: Path
    out_dir: Path
    name: str
    preprocessing: Preprocessing
    crop_scale: float
    live_index: int
    output: str
    detector: Path
    calibration: Path | None = None
    images: list[Image] | None = None  # in-memory photos instead of a folder
    max_calibration: int = 200
    show_progress: bool = True


def antispoof_crops(images: list[Image], detector: Path, size: tuple[int, int],
                    crop_scale: float) -> npt.NDArray[np.uint8]:  # fmt: skip
    """The device's crops of the largest face of each photo (photos without a face skipped)."""
    import cv2

    from edge.liveness.texture import crop_box
    from edge.vision.detector import FaceDetector

    det = FaceDetector.load(detector)
    out = []
    for img in images:
        faces = det.detect(img)
        if not faces:
            continue
        box = max(faces, key=lambda d: d.box.w * d.box.h).box
        x0, y0, x1, y1 = crop_box(box, crop_scale, img.shape[1], img.shape[0])
        out.append(cv2.resize(img[y0:y1, x0:x1], size, interpolation=cv2.INTER_LINEAR))
    return np.asarray(out, dtype=np.uint8).reshape(-1, size[1], size[0], 3)


def _photos(cfg: AntispoofConfig) -> list[Image]:
    if cfg.images is not None:
        return list(cfg.images)
    if cfg.calibration is None:
        raise FacegateError("--calibration: face photos are needed for the int8 ranges")
    from edge.errors import ImageError
    from edge.imageio import list_images, read_image

    out = []
    for p in list_images(cfg.calibration)[: cfg.max_calibration]:
        try:
            out.append(read_image(p))
        except ImageError:
            continue
    return out


def _live(outputs: npt.NDArray[np.float32], cfg: AntispoofConfig) -> npt.NDArray[np.float64]:
    from edge.liveness.texture import live_probability

    return np.array([live_probability(o, cfg.output, cfg.live_index) for o in outputs])


def _run_tflite(path: Path, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Every input through a TFLite model, (de)quantised as its tensors say."""
    from edge.numerics import dequantize, quantize
    from edge.vision.runtime import Interpreter

    it = Interpreter(path, num_threads=2)
    inp, out = it.input_details[0], it.output_details[0]
    outs = []
    for xi in x:
        v: Any = xi[None]
        if np.dtype(inp["dtype"]).name == "int8":
            v = quantize(v, float(inp["quantization"][0]), int(inp["quantization"][1]))
        y = it.run(v)[0]
        if np.dtype(out["dtype"]).name == "int8":
            y = dequantize(y, float(out["quantization"][0]), int(out["quantization"][1]))
        outs.append(np.asarray(y, dtype=np.float32).reshape(-1))
    return np.asarray(outs, dtype=np.float32)


def _manifest(cfg: AntispoofConfig, src: SourceModel, model: Path, quant: str, n: int) -> Manifest:
    inp, out = io_specs(model)
    return Manifest(
        kind="antispoof", name=f"{cfg.name}-{quant}", file=model.name, sha256=sha256_file(model),
        input=inp, output=out, preprocessing=cfg.preprocessing, quantization=quant,
        source={"file": src.path.name, "format": src.kind, "sha256": src.sha256},
        tool_version=TOOL_VERSION,
        extra={"crop_scale": cfg.crop_scale, "live_index": cfg.live_index, "output": cfg.output,
               "crop": "the face box grown crop_scale times about its centre, square, "
                       "shifted into the frame, resized to the input",
               "calibration_faces": n},
        path=model.with_suffix(".json"),
    )  # fmt: skip


def quantize_antispoof(cfg: AntispoofConfig) -> dict[str, Any]:
    """Convert, check and write ``<name>_float32``/``<name>_int8`` with manifests and a report."""
    if cfg.output not in OUTPUTS:
        raise FacegateError(f"--output must be one of {OUTPUTS}, not {cfg.output!r}")
    if not 0.5 <= cfg.crop_scale <= 10:
        raise FacegateError(f"--crop-scale must be in [0.5, 10], got {cfg.crop_scale}")
    if cfg.images is None:
        model_format(cfg.model)  # a missing or unknown model fails before any work
    crops = antispoof_crops(_photos(cfg), cfg.detector, cfg.preprocessing.size, cfg.crop_scale)
    if len(crops) == 0:
        raise NoFaceError("no calibration photo holds a detectable face")
    src = load_source(cfg.model, cfg.preprocessing.size)
    x = preprocess(crops, cfg.preprocessing)
    f32, i8 = convert_float(src), convert_int8(src, x, cfg.show_progress)
    try:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}-antispoof-", dir=cfg.out_dir))
    except OSError as e:
        raise ModelError(f"cannot write into {cfg.out_dir}: {e}") from None
    try:
        paths = {
            "float32": tmp / f"{cfg.name}_float32.tflite",
            "int8": tmp / f"{cfg.name}_int8.tflite",
        }
        paths["float32"].write_bytes(f32)
        paths["int8"].write_bytes(i8)
        for q, p in paths.items():
            save_manifest(_manifest(cfg, src, p, q, len(crops)))
        ref = _live(np.asarray([src(xi[None])[0] for xi in x]), cfg)
        got = {q: _live(_run_tflite(p, x), cfg) for q, p in paths.items()}
        report = {
            "model": cfg.name, "crops": len(crops), "crop_scale": cfg.crop_scale,
            "preprocessing": cfg.preprocessing.__dict__, "live_index": cfg.live_index,
            "output": cfg.output,
            "live_probability": {
                q: {"mean_abs_diff_to_source": round(float(np.abs(g - ref).mean()), 5),
                    "max_abs_diff_to_source": round(float(np.abs(g - ref).max()), 5),
                    "mean": round(float(g.mean()), 5)}
                for q, g in got.items()
            },
        }  # fmt: skip
        write_json_atomic(tmp / f"{cfg.name}_int8.report.json", report)
        final = {}
        for n in sorted((p.name for p in tmp.iterdir()), key=lambda n: (n.endswith(".json"), n)):
            (tmp / n).chmod(0o644)
            (tmp / n).replace(cfg.out_dir / n)
            final[n] = cfg.out_dir / n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["files"] = [str(p) for p in final.values()]
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--antispoof`` flags of ``python -m tools.quantize``."""
    g = p.add_argument_group("anti-spoofing model (--antispoof)")
    g.add_argument(
        "--antispoof",
        action="store_true",
        help="the model is a face anti-spoofing classifier (liveness), not an embedder",
    )
    g.add_argument(
        "--crop-scale",
        type=float,
        default=2.7,
        help="the crop is the face box grown this many times (MiniFASNet: 2.7 or 4)",
    )
    g.add_argument("--live-index", type=int, default=1, help="the output class that means live")
    g.add_argument("--output", choices=OUTPUTS, default="softmax",
                   help="softmax over classes, or one sigmoid logit")  # fmt: skip


def config_from_args(a: argparse.Namespace, pre: Preprocessing) -> AntispoofConfig:
    if a.live_index < 0:
        raise FacegateError(f"--live-index must be >= 0, got {a.live_index}")
    return AntispoofConfig(
        model=a.model, out_dir=a.out_dir, name=a.name, preprocessing=pre,
        crop_scale=a.crop_scale, live_index=a.live_index, output=a.output, detector=a.detector,
        calibration=a.calibration, max_calibration=a.max_calibration,
        show_progress=not a.no_progress,
    )  # fmt: skip
