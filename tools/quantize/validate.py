"""Validation for :mod:`tools.quantize`: does the int8 model embed faces like the float one?

Embedding agreement (cosine of int8 to float32 to the source model),
verification accuracy and TAR at FAR of both models on calibration and
held-aside faces (the pair statistics are :mod:`tools.stats`'), latency,
the op list against the Edge TPU's, and the Markdown report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge.vision.manifest import Manifest
from tools import stats
from tools.quantize.common import F32, FAR_TARGET, SUGGESTED, TOOL_VERSION
from tools.quantize.convert import preprocess
from tools.quantize.faces import FaceCrops
from tools.quantize.inspect import model_ops, non_int8_ops
from tools.quantize.source import SourceModel

if TYPE_CHECKING:
    from tools.quantize.config import QuantizeConfig

TAR_RATES = (1e-2, 1e-3, 1e-4)  # the report's TAR at FAR columns


def pair_scores(emb: F32, labels: Sequence[str]) -> tuple[F32, F32]:
    """Cosine distances of all same-person and all different-person pairs of labelled faces.

    :func:`tools.stats.pair_distances` over the faces that have a label (a
    photo straight in a flat calibration folder, label "", pairs with none).
    """
    keep = [i for i, lab in enumerate(labels) if lab]
    e = np.asarray(emb, dtype=np.float32).reshape(len(labels), -1)[keep]
    return stats.pair_distances(e, [labels[i] for i in keep])


def verification(
    genuine: stats.FloatArray, impostor: stats.FloatArray, far: float = FAR_TARGET
) -> dict[str, Any]:
    """Best-threshold accuracy over all pairs, and TAR at a false-accept rate.

    From :func:`tools.stats.det_curve` (a pair is accepted when ``d < t``, at
    every observed distance ``t``): accuracy is the largest
    ``(#genuine accepted + #impostor rejected) / #pairs``, balanced accuracy
    the largest ``(TAR(t) + TRR(t)) / 2`` (not swamped by the many impostor
    pairs). TAR@FAR is the share of genuine pairs accepted at
    :func:`tools.stats.threshold_for_far`'s threshold (the largest accepting at
    most ``floor(far * #impostor)`` impostors).
    """
    ng, ni = len(genuine), len(impostor)
    if ng == 0 or ni == 0:
        return {"pairs_genuine": ng, "pairs_impostor": ni, "accuracy": None, "tar_at_far": None}
    curve = stats.det_curve(genuine, impostor)
    tar_t, trr_t = 1.0 - curve.fnmr, 1.0 - curve.fmr
    acc = (tar_t * ng + trr_t * ni) / (ng + ni)
    best = int(np.argmax(acc))
    t_far = stats.threshold_for_far(impostor, far)
    # TAR at stricter rates too, where the impostor pairs can resolve them (>= 1/rate pairs).
    tar_at = {
        f"{r:g}": (1.0 - stats.frr_at(genuine, stats.threshold_for_far(impostor, r)))
        if ni * r >= 1.0
        else None
        for r in TAR_RATES
    }
    return {
        "pairs_genuine": ng,
        "pairs_impostor": ni,
        "accuracy": float(acc[best]),
        "accuracy_threshold": float(curve.thresholds[best]),
        "balanced_accuracy": float(np.max((tar_t + trr_t) / 2)),
        "far": far,
        "tar_at_far": 1.0 - stats.frr_at(genuine, t_far),
        "threshold_at_far": t_far,
        "tar_at": tar_at,
    }


def _agreement(a: F32, b: F32) -> dict[str, Any]:
    if len(a) == 0:
        return {"n": 0, "mean_cosine": None, "min_cosine": None}
    c = np.sum(a * b, axis=1)
    return {"n": len(c), "mean_cosine": float(c.mean()), "min_cosine": float(c.min())}


def latency_ms(model_path: Path, runs: int = 10, num_threads: int = 2) -> float:
    """Median wall time of one inference in ms (after one warm-up run), device runtime."""
    from edge.vision.runtime import load_interpreter

    it = load_interpreter(model_path, num_threads=num_threads)
    d = it.input_details[0]
    x = np.zeros(tuple(d["shape"]), dtype=d["dtype"])
    it.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def source_agreement(
    source: SourceModel, float_emb: F32, inputs: F32, limit: int = 32
) -> dict[str, Any]:
    """Cosine of the float TFLite embeddings to the source model's own, on ``limit`` faces.

    The faces are spread evenly over ``inputs`` (calibration, then held aside);
    the source model runs in TensorFlow, so this is the slow part of validation.
    """
    if len(inputs) == 0:
        return _agreement(float_emb[:0], float_emb[:0])
    idx = np.unique(np.linspace(0, len(inputs) - 1, min(limit, len(inputs))).astype(int))
    ref = np.concatenate([source(inputs[i : i + 1]) for i in idx])
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    return _agreement(float_emb[idx], ref.astype(np.float32))


def _embed(model: Path, crops: npt.NDArray[np.uint8]) -> F32:
    from edge.vision.embedder import Embedder

    emb = Embedder.load(model)
    return emb.embed(crops) if len(crops) else np.zeros((0, emb.dim), np.float32)


def _r(x: float | None, nd: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _preprocessing_text(pre: dict[str, Any]) -> str:
    size = "x".join(str(v) for v in pre["size"])
    text = f"{size} {pre['color']}, the device feeds (pixel - {pre['mean']:g}) / {pre['std']:g}"
    if pre.get("in_graph", "none") == "per-image":
        text += (
            "; the graph then standardises each face itself (FaceNet's per-image "
            "standardisation, written with rsqrt)"
        )
    return text


def _tar_rows(f: dict[str, Any], q: dict[str, Any]) -> list[str]:
    """One table row per TAR-at-FAR level (the ones the impostor pairs resolve)."""
    rows = [f"| TAR at FAR={FAR_TARGET:g} | {_r(f['tar_at_far'])} | {_r(q['tar_at_far'])} |"]
    for rate, value in (f.get("tar_at") or {}).items():
        if float(rate) != FAR_TARGET and value is not None:
            rows.append(f"| TAR at FAR={rate} | {_r(value)} | {_r(q['tar_at'].get(rate))} |")
    return rows


def render_report(rep: dict[str, Any]) -> str:
    """The validation report as Markdown."""
    f, q = rep["float32"], rep["int8"]
    lines = [
        f"# Quantisation report: {rep['name']}",
        "",
        f"Source: `{rep['source']['file']}` ({rep['source']['format']}, sha256 "
        f"{rep['source']['sha256'][:16]}...), tool {rep['tool_version']}.",
        f"Faces: {rep['faces']['calibration']} for calibration, {rep['faces']['held_aside']} "
        f"held aside or given for validation (never calibrated on), {rep['faces']['failed']} "
        "photos without a usable face.",
        f"Preprocessing: {_preprocessing_text(rep['preprocessing'])}.",
        "",
        "| | float32 | int8 |",
        "|---|---|---|",
        f"| size (MB) | {f['size_bytes'] / 1e6:.1f} | {q['size_bytes'] / 1e6:.1f} |",
        f"| latency per inference (ms) | {f['latency_ms']:.1f} | {q['latency_ms']:.1f} |",
        f"| verification accuracy (all pairs) | {_r(f['verification']['accuracy'])} "
        f"| {_r(q['verification']['accuracy'])} |",
        f"| balanced accuracy | {_r(f['verification'].get('balanced_accuracy'))} "
        f"| {_r(q['verification'].get('balanced_accuracy'))} |",
        *_tar_rows(f["verification"], q["verification"]),
        f"| input dtype / scale / zero-point | {f['input']['dtype']} | {q['input']['dtype']} / "
        f"{q['input']['scale']:.6g} / {q['input']['zero_point']} |",
        f"| output dtype / scale / zero-point | {f['output']['dtype']} | {q['output']['dtype']} / "
        f"{q['output']['scale']:.6g} / {q['output']['zero_point']} |",
        "",
        f"Pairs: {f['verification']['pairs_genuine']} same-person, "
        f"{f['verification']['pairs_impostor']} different-person.",
        "",
        "## Embedding agreement (cosine similarity)",
        "",
        "| faces | n | mean | min |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("float_vs_source", "float32 TFLite vs source model"),
        ("int8_vs_float_calibration", "int8 vs float32, calibration faces"),
        ("int8_vs_float_held_aside", "int8 vs float32, held-aside faces"),
    ):
        a = rep["agreement"][key]
        lines.append(f"| {label} | {a['n']} | {_r(a['mean_cosine'])} | {_r(a['min_cosine'])} |")
    return "\n".join(lines + _operators_section(rep))


def _operators_section(rep: dict[str, Any]) -> list[str]:
    """The int8 model's operators (not int8, not on the Edge TPU) and the suggested calibration."""
    bad = rep["int8"]["non_int8_ops"]
    tpu_bad = rep["int8"]["edgetpu_unsupported_ops"]
    lines = [
        "",
        "## Operators",
        "",
        f"int8 model: {rep['int8']['op_count']} ops; "
        f"not int8: {', '.join(bad) if bad else 'none'}; "
        f"not on the Edge TPU's supported list: {', '.join(tpu_bad) if tpu_bad else 'none'}.",
    ]
    tpu = rep.get("edgetpu")
    if tpu is not None:
        if tpu.get("available") and "ops_mapped" in tpu:
            lines.append(
                f"edgetpu_compiler: {tpu['ops_mapped']} of {tpu['ops_total']} ops "
                "mapped to the Edge TPU."
            )
        else:
            lines.append(str(tpu.get("message")))
    cal = rep["suggested_calibration"]
    lines += [
        "",
        f"Suggested threshold (cosine distance) {cal['threshold']}, margin {cal['margin']} "
        f"({cal['source']}); run `python -m tools.calibrate` on your enrolment photos to fit them.",
        "",
    ]
    return lines


def validate(
    cfg: QuantizeConfig,
    source: SourceModel,
    manifests: dict[str, Manifest],
    paths: dict[str, Path],
    cal: FaceCrops,
    held: FaceCrops,
    failed: int,
) -> dict[str, Any]:
    from tools.edgetpu_ops import unsupported_ops

    emb = {q: (_embed(p, cal.crops), _embed(p, held.crops)) for q, p in paths.items()}
    # Verification pairs use original photos only: an augmented copy paired with
    # its own photo would be a trivially easy "same person" pair.
    names = cal.names + held.names
    labels = [
        lab if "#aug" not in n else ""
        for lab, n in zip(cal.labels + held.labels, names, strict=True)
    ]
    models = {
        q: _model_record(p, manifests[q], np.concatenate(emb[q]), labels) for q, p in paths.items()
    }
    ops = model_ops(paths["int8"])
    models["int8"]["op_count"] = len(ops)
    models["int8"]["non_int8_ops"] = non_int8_ops(ops)
    models["int8"]["edgetpu_unsupported_ops"] = unsupported_ops(op.name for op in ops)
    models["int8"]["op_names"] = sorted({op.name for op in ops})
    all_cal_inputs = preprocess(np.concatenate([cal.crops, held.crops]), cfg.preprocessing)
    return {
        "name": cfg.name,
        "tool_version": TOOL_VERSION,
        "source": {"file": source.path.name, "format": source.kind, "sha256": source.sha256},
        "preprocessing": {
            "size": list(cfg.preprocessing.size),
            "mean": cfg.preprocessing.mean,
            "std": cfg.preprocessing.std,
            "color": cfg.preprocessing.color,
            "in_graph": cfg.standardize,
        },
        "faces": {"calibration": len(cal), "held_aside": len(held), "failed": failed},
        "float32": models["float32"],
        "int8": models["int8"],
        "agreement": {
            "float_vs_source": source_agreement(
                source, np.concatenate(emb["float32"]), all_cal_inputs
            ),
            "int8_vs_float_calibration": _agreement(emb["int8"][0], emb["float32"][0]),
            "int8_vs_float_held_aside": _agreement(emb["int8"][1], emb["float32"][1]),
        },
        "suggested_calibration": _suggested(),
    }


def _suggested() -> dict[str, Any]:
    """The tool's default calibration, as the report suggests it."""
    return {
        "threshold": SUGGESTED.threshold,
        "margin": SUGGESTED.margin,
        "conf_midpoint": SUGGESTED.conf_midpoint,
        "conf_scale": SUGGESTED.conf_scale,
        "source": SUGGESTED.source,
    }


def _model_record(
    p: Path, m: Manifest, embeddings: npt.NDArray[np.float32], labels: Sequence[str]
) -> dict[str, Any]:
    """One converted model in the report: file, size, speed, tensors and verification."""
    return {
        "file": p.name,
        "sha256": m.sha256,
        "size_bytes": p.stat().st_size,
        "latency_ms": latency_ms(p),
        "input": {"dtype": m.input.dtype, "scale": m.input.scale, "zero_point": m.input.zero_point},
        "output": {
            "dtype": m.output.dtype,
            "scale": m.output.scale,
            "zero_point": m.output.zero_point,
        },
        "embedding_size": m.embedding_size,
        "verification": verification(*pair_scores(embeddings, labels)),
    }
