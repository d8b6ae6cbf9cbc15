"""The ``python -m tools.quantize`` run: faces, model, conversion, validation, files.

:func:`quantize` chains the stages (:mod:`~tools.quantize.faces`,
:mod:`~tools.quantize.source`, :mod:`~tools.quantize.convert`,
:mod:`~tools.quantize.validate`) and writes everything into a temporary
folder beside the output, renamed into place only when all of it succeeded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import FacegateError, ModelError, NoFaceError
from edge.types import Image
from edge.vision.manifest import (
    Manifest,
    Preprocessing,
    load_manifest,
    save_manifest,
    sha256_file,
    write_json_atomic,
)
from tools._common import Stage, run_tool
from tools.quantize.common import (
    DEFAULT_DETECTOR,
    STANDARDIZE,
    SUGGESTED,
    TOOL_VERSION,
)
from tools.quantize.config import QuantizeConfig
from tools.quantize.convert import convert_float, convert_int8, preprocess
from tools.quantize.faces import (
    FaceCrops,
    augmented,
    collect_faces,
    holdout_split,
    labelled_images,
    read_folder,
)
from tools.quantize.inspect import edgetpu_compile, io_specs
from tools.quantize.source import SourceModel, load_source, model_format, standardized
from tools.quantize.validate import render_report, validate

# What the manifest says about a graph that standardises each face itself.
IN_GRAPH_TEXT = {
    "per-image": (
        "per-image standardisation inside the model: y = (x - mean(x)) * "
        "rsqrt(max(var(x), 1/(N std^2))) over each face's N values, after the "
        "preprocessing above (FaceNet's prewhiten; the device feeds (pixel - mean) / std)"
    )
}


@dataclass(frozen=True)
class QuantizeResult:
    float_model: Path
    int8_model: Path
    report_md: Path
    report_json: Path
    report: dict[str, Any]


def _manifest(
    cfg: QuantizeConfig, source: SourceModel, model: Path, quant: str, n_cal: int
) -> Manifest:
    inp, out = io_specs(model)
    emb = int(np.prod(out.shape[1:]))
    extra: dict[str, Any] = {"calibration_faces": n_cal, **cfg.extra}
    if cfg.standardize in IN_GRAPH_TEXT:
        extra["in_graph_preprocessing"] = IN_GRAPH_TEXT[cfg.standardize]
    return Manifest(
        kind="embedder",
        name=f"{cfg.name}-{quant}",
        file=model.name,
        sha256=sha256_file(model),
        input=inp,
        output=out,
        preprocessing=cfg.preprocessing,
        quantization=quant,
        embedding_size=emb,
        alignment=cfg.alignment,
        calibration=SUGGESTED,
        source={
            "file": source.path.name,
            "format": source.kind,
            "sha256": source.sha256,
            **source.details,
        },
        tool_version=TOOL_VERSION,
        extra=extra,
        path=model.with_suffix(".json"),
    )


def _collect(cfg: QuantizeConfig, images: Iterable[tuple[str, str, Image]], n: int) -> FaceCrops:
    pre = cfg.preprocessing
    return collect_faces(
        images, cfg.detector, pre.size, cfg.alignment, cfg.min_face, cfg.show_progress, n
    )


def gather_faces(cfg: QuantizeConfig) -> FaceCrops:
    """The calibration faces: in-memory photos, or a folder (with augmented copies)."""
    if cfg.images is not None:
        faces = _collect(cfg, cfg.images, len(cfg.images))
    elif cfg.calibration is not None:
        n_img = len(labelled_images(cfg.calibration))
        if n_img == 0:
            raise NoFaceError(f"{cfg.calibration}: no images in the calibration folder")
        images: Iterable[tuple[str, str, Image]] = read_folder(cfg.calibration)
        if cfg.augment:
            images = augmented(images, cfg.augment)
        faces = _collect(cfg, images, n_img * (1 + cfg.augment))
    else:
        raise NoFaceError("no calibration faces given (--calibration DIR)")
    if len(faces) == 0:
        where = cfg.calibration or "the calibration images"
        raise NoFaceError(f"{where}: no usable face found in any image")
    return faces


def split_faces(cfg: QuantizeConfig, faces: FaceCrops) -> tuple[FaceCrops, FaceCrops]:
    """(calibration, held aside): :func:`holdout_split`, at most ``max_calibration``, plus
    the ``validation`` folder's faces on the held-aside side."""
    cal_idx, held_idx = holdout_split(faces.labels, cfg.holdout, faces.names)
    if len(cal_idx) > cfg.max_calibration:
        step = len(cal_idx) / cfg.max_calibration
        cal_idx = [cal_idx[int(i * step)] for i in range(cfg.max_calibration)]
    cal = faces.subset(cal_idx)
    held = faces.subset(held_idx)
    if cfg.validation is not None:
        extra = _collect(cfg, read_folder(cfg.validation), len(labelled_images(cfg.validation)))
        held = FaceCrops(
            np.concatenate([held.crops, extra.crops]),
            held.labels + extra.labels,
            held.names + extra.names,
        )
    return cal, held


def load_model(cfg: QuantizeConfig) -> SourceModel:
    """The source model, with the in-graph preprocessing ``cfg.standardize`` asks for."""
    pre = cfg.preprocessing
    source = cfg.source or load_source(cfg.model, pre.size, cfg.input_node, cfg.output_node)
    if cfg.standardize == "per-image":
        source = standardized(source, pre.std)
    return source


def _move_into_place(tmp: Path, out_dir: Path) -> dict[str, Path]:
    """Rename every file of ``tmp`` into ``out_dir``: models before manifests and reports,
    so a manifest never points at a model that is not there yet."""
    final: dict[str, Path] = {}
    names = sorted(p.name for p in tmp.iterdir())
    for n in sorted(names, key=lambda n: (n.endswith(".json"), n)):
        # mkstemp files are 0600; models are read by the door's service user.
        os.chmod(tmp / n, 0o644)
        os.replace(tmp / n, out_dir / n)
        final[n] = out_dir / n
    return final


def _write(
    cfg: QuantizeConfig,
    source: SourceModel,
    models: tuple[bytes, bytes],
    cal: FaceCrops,
    held: FaceCrops,
    failed: int,
) -> QuantizeResult:
    try:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}-quantize-", dir=cfg.out_dir))
    except OSError as e:
        raise ModelError(f"cannot write into {cfg.out_dir}: {e}") from None
    try:
        paths = {q: tmp / f"{cfg.name}_{q}.tflite" for q in ("float32", "int8")}
        paths["float32"].write_bytes(models[0])
        paths["int8"].write_bytes(models[1])
        manifests = {q: _manifest(cfg, source, p, q, len(cal)) for q, p in paths.items()}
        for m in manifests.values():
            save_manifest(m)
        report = validate(cfg, source, manifests, paths, cal, held, failed)
        if cfg.edgetpu:
            report["edgetpu"] = edgetpu_compile(paths["int8"], tmp)
        stem = f"{cfg.name}_int8.report"
        (tmp / f"{stem}.md").write_text(render_report(report), encoding="utf-8")
        write_json_atomic(tmp / f"{stem}.json", report)
        final = _move_into_place(tmp, cfg.out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return QuantizeResult(
        final[paths["float32"].name],
        final[paths["int8"].name],
        final[f"{stem}.md"],
        final[f"{stem}.json"],
        report,
    )


def quantize(cfg: QuantizeConfig) -> QuantizeResult:
    """Convert, validate and write the float32 and int8 models with manifests and report."""
    if cfg.standardize not in STANDARDIZE:
        raise FacegateError(f"standardize must be one of {STANDARDIZE}, not {cfg.standardize!r}")
    with Stage("quantize", total=5, enabled=cfg.show_progress) as stage:
        if cfg.source is None:
            model_format(cfg.model)  # a missing file or unknown format fails before any work
        faces = gather_faces(cfg)
        cal, held = split_faces(cfg, faces)
        stage.step("faces aligned")
        source = load_model(cfg)
        stage.step("model loaded")
        float_bytes = convert_float(source)
        stage.step("float32 converted")
        inputs = preprocess(cal.crops, cfg.preprocessing)
        int8_bytes = convert_int8(source, inputs, cfg.show_progress, cfg.snap_steps)
        stage.step("int8 converted")
        res = _write(cfg, source, (float_bytes, int8_bytes), cal, held, faces.failed)
        stage.step("validated and written")
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.quantize",
        description="Convert a face embedder (frozen .pb, Keras .h5/.keras, SavedModel) to a "
        "full-integer int8 TFLite model plus a float32 one, with manifests and a report.",
    )
    p.add_argument("model", type=Path, help="frozen graph (.pb), Keras (.h5/.keras) or SavedModel")
    p.add_argument("--calibration", type=Path, required=True, help="face photos: <dir>/<Person>/*")
    p.add_argument("--validation", type=Path, help="more labelled faces, only for the report")
    p.add_argument("--out-dir", type=Path, default=Path("models"))
    p.add_argument("--name", default="facenet", help="output base name (default: facenet)")
    p.add_argument("--input-size", type=int, help="square input side in pixels (default 160)")
    p.add_argument("--mean", type=float, help="pixel mean: input = (pixel - mean) / std (127.5)")
    p.add_argument("--std", type=float, help="pixel std (default 128)")
    p.add_argument("--color", choices=("RGB", "BGR"), help="channel order (default RGB)")
    p.add_argument(
        "--standardize",
        choices=STANDARDIZE,
        default="none",
        help="per-image: put FaceNet's per-image standardisation inside the graph (what "
        "facenet_keras.h5 was trained with; the device still feeds (pixel - mean) / std)",
    )
    p.add_argument("--alignment", help="face template: facenet160 (default) or arcface112 (SFace)")
    p.add_argument("--preprocessing-from", type=Path, help="read the above from a manifest")
    p.add_argument("--input-node", default="input", help="frozen graph input (default: input)")
    p.add_argument("--output-node", default="embeddings", help="frozen graph output")
    p.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR)
    p.add_argument("--holdout", type=float, default=0.25, help="share of photos held aside")
    p.add_argument("--augment", type=int, default=0, help="augmented copies per photo")
    p.add_argument("--max-calibration", type=int, default=400)
    p.add_argument("--edgetpu", action="store_true", help="also run edgetpu_compiler")
    p.add_argument("--no-progress", action="store_true")
    from tools.quantize.antispoof import add_arguments  # liveness (issue 24)

    add_arguments(p)
    return p


def _preprocessing(a: argparse.Namespace) -> tuple[Preprocessing, str, str]:
    """(preprocessing, alignment, standardize): flags, else the manifest, else the defaults."""
    pre = Preprocessing(size=(160, 160), mean=127.5, std=128.0)
    alignment, standardize = "facenet160", a.standardize
    if a.preprocessing_from is not None:
        m = load_manifest(a.preprocessing_from)
        pre, alignment = m.preprocessing, m.alignment or alignment
        if "in_graph_preprocessing" in m.extra and standardize == "none":
            standardize = "per-image"
    if a.input_size is not None:
        if not 16 <= a.input_size <= 1024:
            raise ModelError(f"--input-size must be in 16..1024, got {a.input_size}")
        pre = replace(pre, size=(a.input_size, a.input_size))
    if a.mean is not None:
        pre = replace(pre, mean=a.mean)
    if a.std is not None:
        if a.std <= 0:
            raise ModelError(f"--std must be positive, got {a.std}")
        pre = replace(pre, std=a.std)
    if a.color is not None:
        pre = replace(pre, color=a.color)
    if a.alignment is not None:
        alignment = a.alignment
    return pre, alignment, standardize


def config_from_args(a: argparse.Namespace) -> QuantizeConfig:
    """Validate flags and build the config (preprocessing: flags over manifest over defaults)."""
    from edge.vision.align import TEMPLATES

    pre, alignment, standardize = _preprocessing(a)
    if alignment not in TEMPLATES:
        raise FacegateError(f"--alignment must be one of {sorted(TEMPLATES)}, not {alignment!r}")
    if not 0 <= a.holdout < 1:
        raise FacegateError(f"--holdout must be in [0, 1), got {a.holdout}")
    if a.augment < 0 or a.max_calibration < 1:
        raise FacegateError("--augment must be >= 0 and --max-calibration >= 1")
    return QuantizeConfig(
        model=a.model,
        out_dir=a.out_dir,
        name=a.name,
        calibration=a.calibration,
        validation=a.validation,
        preprocessing=pre,
        input_node=a.input_node,
        output_node=a.output_node,
        alignment=alignment,
        detector=a.detector,
        holdout=a.holdout,
        augment=a.augment,
        max_calibration=a.max_calibration,
        edgetpu=a.edgetpu,
        show_progress=not a.no_progress,
        standardize=standardize,
    )


def summary(res: QuantizeResult) -> str:
    """The full report, then where the files went (for the terminal)."""
    out = [render_report(res.report)]
    out.append(f"wrote {res.float_model}, {res.int8_model} (+ manifests), {res.report_md}")
    return "\n".join(out)


def _main(argv: Sequence[str] | None) -> int:
    a = build_parser().parse_args(argv)
    if a.antispoof:  # liveness (issue 24): a face anti-spoofing classifier
        import json

        from tools.quantize.antispoof import config_from_args as antispoof_config
        from tools.quantize.antispoof import quantize_antispoof

        print(json.dumps(quantize_antispoof(antispoof_config(a, _preprocessing(a)[0])), indent=2))
        return 0
    res = quantize(config_from_args(a))
    print(summary(res))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("quantize", _main, argv)
