"""Face embeddings from an int8 (or float32) TFLite model, as its manifest describes.

The manifest fixes everything the device must get right: the pixel
normalisation ``(rgb - mean) / std``, the input quantisation
``q = round(x / scale) + zero_point``, the output dequantisation
``x = scale * (q - zero_point)``, and the model's sha256. A model that
disagrees with its manifest is refused before it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ManifestMismatch, ModelError
from edge.imageio import apply_lut
from edge.numerics import dequantize, l2_normalize, quantize
from edge.types import Image
from edge.vision.manifest import Manifest, load_manifest, verify_file
from edge.vision.runtime import Interpreter

_DTYPES = {"int8": np.int8, "uint8": np.uint8, "float32": np.float32}


def pixel_lut(manifest: Manifest) -> npt.NDArray[np.generic]:
    """The model input value of each pixel value 0..255 (normalise, then quantise).

    Every input pixel maps through the same affine steps, so a 256-entry
    table replaces per-frame float arithmetic: ``input = lut[crop]``.
    """
    pre = manifest.preprocessing
    x = (np.arange(256, dtype=np.float32) - np.float32(pre.mean)) / np.float32(pre.std)
    spec = manifest.input
    if spec.dtype == "float32":
        return x.astype(np.float32)
    if spec.dtype in ("int8", "uint8"):
        return quantize(x, spec.scale, spec.zero_point, _DTYPES[spec.dtype])
    raise ModelError(f"{manifest.path}: unsupported input dtype {spec.dtype}")


class Embedder:
    """Aligned RGB crops in, L2-normalised float32 embeddings out."""

    def __init__(self, manifest: Manifest, interpreter: Interpreter) -> None:
        self.manifest = manifest
        self.interpreter = interpreter
        inp = interpreter.input_details[0]
        out = interpreter.output_details[0]
        shape = tuple(int(x) for x in inp["shape"])
        dtype = np.dtype(inp["dtype"]).name
        where = manifest.model_path
        if shape != manifest.input.shape:
            raise ManifestMismatch(
                f"{where}: input shape {shape} differs from manifest {manifest.input.shape}"
            )
        if dtype != manifest.input.dtype:
            raise ManifestMismatch(
                f"{where}: input dtype {dtype} differs from manifest {manifest.input.dtype}"
            )
        qs, qz = inp.get("quantization", (0.0, 0))
        if dtype != "float32" and (
            not np.isclose(qs, manifest.input.scale) or int(qz) != manifest.input.zero_point
        ):
            raise ManifestMismatch(
                f"{where}: input quantisation ({qs}, {qz}) differs from manifest "
                f"({manifest.input.scale}, {manifest.input.zero_point})"
            )
        self.size = (shape[2], shape[1])  # (width, height)
        self.dim = int(np.prod(out["shape"][1:]))
        if manifest.embedding_size and self.dim != manifest.embedding_size:
            raise ManifestMismatch(
                f"{where}: embedding size {self.dim} differs from manifest "
                f"{manifest.embedding_size}"
            )
        self._lut = pixel_lut(manifest)
        self._bgr = manifest.preprocessing.color.upper() == "BGR"
        out_dtype = np.dtype(out["dtype"]).name
        self._out_q = out.get("quantization", (0.0, 0)) if out_dtype != "float32" else None
        self._input = np.zeros(shape, dtype=_DTYPES[dtype])

    @classmethod
    def load(
        cls,
        model_path: Path | str,
        runtime: str = "auto",
        num_threads: int = 2,
        edgetpu: bool = False,
    ) -> Embedder:
        """Load an embedder from its model (or manifest) path, verifying the manifest."""
        manifest = load_manifest(model_path)
        if manifest.kind != "embedder":
            raise ModelError(f"{manifest.path}: not an embedder manifest (kind={manifest.kind})")
        path = verify_file(manifest)
        return cls(manifest, Interpreter(path, runtime, num_threads, edgetpu))

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    def _check(self, crop: Image) -> None:
        if crop.shape[:2] != (self.size[1], self.size[0]) or crop.dtype != np.uint8:
            raise ModelError(
                f"crop of shape {crop.shape}/{crop.dtype} does not fit the model input "
                f"{self.size[0]}x{self.size[1]} uint8"
            )

    def _raw(self, crop: Image) -> npt.NDArray[Any]:
        """The model's raw output for one checked crop, shape (D,)."""
        px = crop[..., ::-1] if self._bgr else crop
        apply_lut(px, self._lut, self._input[0])
        return self.interpreter.run(self._input)[0].reshape(-1)

    def _finish(self, raw: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Raw outputs (..., D) -> dequantised (when int8) unit vectors."""
        if self._out_q is not None:
            x = dequantize(raw, float(self._out_q[0]), int(self._out_q[1]))
        else:
            x = raw.astype(np.float32, copy=False)
        return l2_normalize(x)

    def embed_one(self, crop: Image) -> npt.NDArray[np.float32]:
        """One aligned crop (H, W, 3) uint8 RGB -> a unit vector (D,)."""
        self._check(crop)
        return self._finish(self._raw(crop))

    def embed(self, crops: npt.NDArray[np.uint8] | list[Image]) -> npt.NDArray[np.float32]:
        """Several crops -> (N, D) unit vectors.

        The model runs one crop at a time; the raw outputs are gathered and
        dequantised and normalised together, once per frame rather than per face.
        """
        arrays = [np.asarray(c) for c in crops]
        for c in arrays:
            self._check(c)
        if not arrays:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._finish(np.stack([self._raw(c) for c in arrays]))
