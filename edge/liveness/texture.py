"""An optional, user-supplied texture model (a face anti-spoofing CNN such as MiniFASNet).

No such weights ship with facegate (none is in a registry package); a user
converts their own with ``python -m tools.quantize MODEL --antispoof ...``,
which records the model's exact preprocessing in its manifest (``kind``
``"antispoof"``): the crop (the face box grown ``crop_scale`` times about its
centre, made square, resized to the input), the channel order, the value
range (``(pixel - mean) / std``), the output (``softmax`` over classes or a
single ``sigmoid`` logit) and which class means live (``live_index``).

The liveness stage uses it as one more cue, and only to refuse: a track whose
mean live probability stays under ``[liveness] texture_min`` is a spoof.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ManifestMismatch, ModelError
from edge.numerics import dequantize, quantize
from edge.types import Box, Image
from edge.vision.manifest import Manifest, load_manifest, verify_file

_DTYPES = {"int8": np.int8, "uint8": np.uint8, "float32": np.float32}


def crop_box(box: Box, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The square crop ``(x0, y0, x1, y1)``: the box's longer side times ``scale``, clipped.

    Centred on the box's centre, then shifted (not shrunk) to stay inside the
    frame where it can, as MiniFASNet's own cropping does.
    """
    side = max(box.w, box.h) * scale
    side = min(side, float(width), float(height))
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    x0 = min(max(cx - side / 2, 0.0), width - side)
    y0 = min(max(cy - side / 2, 0.0), height - side)
    return round(x0), round(y0), round(x0 + side), round(y0 + side)


def live_probability(raw: npt.NDArray[np.float32], output: str, live_index: int) -> float:
    """The live probability from the model's (dequantised) output.

    ``softmax``: ``exp(z_k) / sum_j exp(z_j)`` for ``k = live_index`` (a model
    whose last layer is already a softmax gives the same class ranking, and
    its probabilities are passed through unchanged when they sum to 1);
    ``sigmoid``: ``1 / (1 + exp(-z))`` of the single output.
    """
    z = np.asarray(raw, dtype=np.float64).reshape(-1)
    if output == "sigmoid":
        return 1.0 / (1.0 + math.exp(-float(np.clip(z[0], -60, 60))))
    if z.size <= live_index:
        raise ModelError(f"live_index {live_index} outside the model's {z.size} outputs")
    if np.all(z >= 0) and abs(float(z.sum()) - 1.0) < 1e-2:
        return float(z[live_index])
    e = np.exp(z - z.max())
    return float(e[live_index] / e.sum())


class TextureModel:
    """``live(rgb, box) -> probability`` with a verified anti-spoofing model."""

    def __init__(self, manifest: Manifest, interpreter: Any) -> None:
        self.manifest = manifest
        self.interpreter = interpreter
        inp = interpreter.input_details[0]
        shape = tuple(int(x) for x in inp["shape"])
        if shape != manifest.input.shape:
            raise ManifestMismatch(
                f"{manifest.model_path}: input shape {shape} differs from manifest "
                f"{manifest.input.shape}"
            )
        dtype = np.dtype(inp["dtype"]).name
        if dtype != manifest.input.dtype:
            raise ManifestMismatch(
                f"{manifest.model_path}: input dtype {dtype} differs from manifest "
                f"{manifest.input.dtype}"
            )
        x = manifest.extra
        try:
            self.crop_scale = float(x["crop_scale"])
            self.live_index = int(x.get("live_index", 0))
            self.output = str(x.get("output", "softmax"))
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{manifest.path}: antispoof manifest without crop_scale") from None
        if self.output not in ("softmax", "sigmoid") or not 0.5 <= self.crop_scale <= 10:
            raise ModelError(f"{manifest.path}: unsupported output or crop_scale")
        self.size = (shape[2], shape[1])
        self._in = inp
        self._out = interpreter.output_details[0]

    @classmethod
    def load(cls, path: Path | str, runtime: str = "auto", num_threads: int = 2) -> TextureModel:
        from edge.vision.runtime import Interpreter

        manifest = load_manifest(path)
        if manifest.kind != "antispoof":
            raise ModelError(f"{manifest.path}: not an antispoof manifest (kind={manifest.kind})")
        model = verify_file(manifest)
        return cls(manifest, Interpreter(model, runtime=runtime, num_threads=num_threads))

    def live(self, rgb: Image, box: Box) -> float:
        """The live probability of the face in ``box``."""
        import cv2

        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = crop_box(box, self.crop_scale, w, h)
        crop = cv2.resize(rgb[y0:y1, x0:x1], self.size, interpolation=cv2.INTER_LINEAR)
        pre = self.manifest.preprocessing
        if pre.color.upper() == "BGR":
            crop = crop[..., ::-1]
        x = (crop.astype(np.float32) - np.float32(pre.mean)) / np.float32(pre.std)
        spec = self.manifest.input
        if spec.dtype in ("int8", "uint8"):
            x_in: npt.NDArray[Any] = quantize(x, spec.scale, spec.zero_point, _DTYPES[spec.dtype])
        else:
            x_in = x.astype(np.float32)
        raw = self.interpreter.run(x_in[None])[0]
        q = self._out.get("quantization", (0.0, 0))
        if np.dtype(self._out["dtype"]).name in ("int8", "uint8") and q[0]:
            raw = dequantize(raw, float(q[0]), int(q[1]))
        return live_probability(np.asarray(raw, dtype=np.float32), self.output, self.live_index)


__all__ = ["TextureModel", "crop_box", "live_probability"]
