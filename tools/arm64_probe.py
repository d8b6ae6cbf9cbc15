"""Embeddings of a fixed photo set, for comparing two machines (arm64 against x86).

Run as a script by the installed package's Python (``VENV/bin/python
tools/arm64_probe.py ...``): it imports only :mod:`edge` and numpy, so on
the arm64 side it runs the installed package, never the checkout's source.
The host runs the same :func:`probe` (``tools.arm64_compare``).

For each embedder, for each photo (in sorted order), the largest face goes
through the device's own path (``Recognizer``: BlazeFace, alignment, the int8
embedder) and its unit embedding is kept (a row of NaN when no usable face
is found). Given the other machine's aligned crops (``--crops``), those are
embedded too: the same input pixels, so any difference is the kernels'
alone, not detection's or alignment's.

Output: one ``.npz`` with, per embedder stem, ``STEM.emb`` (N, D) float32,
``STEM.box`` (N, 4), ``STEM.crops`` (N, H, W, 3) uint8 (this machine's
aligned crops; zeros when no face), ``STEM.crop_emb`` (the embeddings of
``--crops``' crops), plus ``photos`` (the relative paths) and ``meta``
(JSON: machine, Python, numpy, runtime and its version).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DETECTOR = "face_detection_short_range.tflite"
EMBEDDERS = ("sface_int8.tflite", "facenet_int8.tflite")


def photo_list(folder: Path) -> list[Path]:
    """The photo set: image files under ``folder``, sorted by relative path."""
    from edge.imageio import list_images

    return sorted(list_images(folder), key=lambda p: p.relative_to(folder).as_posix())


def runtime_version(name: str) -> str:
    """The installed distribution's version of a runtime module (or '?')."""
    from importlib import metadata

    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(name, name)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def probe(
    models: Path,
    photos: Path,
    runtime: str = "auto",
    embedders: Sequence[str] = EMBEDDERS,
    other_crops: dict[str, npt.NDArray[np.uint8]] | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Embeddings, boxes and crops of every photo's largest face, per embedder."""
    from edge.decide.recognizer import Recognizer
    from edge.imageio import read_image

    paths = photo_list(photos)
    recs = {
        Path(e).stem: Recognizer.from_models(
            models / DETECTOR, models / e, runtime=runtime, num_threads=threads
        )
        for e in embedders
    }
    out: dict[str, Any] = {"photos": np.array([p.relative_to(photos).as_posix() for p in paths])}
    acc: dict[str, dict[str, list[Any]]] = {s: {"emb": [], "box": [], "crops": []} for s in recs}
    for i, path in enumerate(paths):
        rgb = read_image(path)
        for stem, rec in recs.items():
            faces = rec.cropper.crops(rgb)
            w, h = rec.embedder.size
            if faces:
                f = faces[0]
                acc[stem]["emb"].append(rec.embedder.embed([f.crop])[0])
                b = f.detection.box
                acc[stem]["box"].append([b.x, b.y, b.w, b.h])
                acc[stem]["crops"].append(f.crop)
            else:
                acc[stem]["emb"].append(np.full(rec.embedder.dim, np.nan, np.float32))
                acc[stem]["box"].append([np.nan] * 4)
                acc[stem]["crops"].append(np.zeros((h, w, 3), np.uint8))
        print(f"probe: {i + 1}/{len(paths)} {path.name}", file=sys.stderr, flush=True)
    for stem, rec in recs.items():
        out[f"{stem}.emb"] = np.asarray(acc[stem]["emb"], np.float32)
        out[f"{stem}.box"] = np.asarray(acc[stem]["box"], np.float64)
        out[f"{stem}.crops"] = np.asarray(acc[stem]["crops"], np.uint8)
        given = (other_crops or {}).get(stem)
        if given is not None:
            out[f"{stem}.crop_emb"] = rec.embedder.embed(list(given))
    loaded = next(iter(recs.values())).embedder.interpreter.runtime if recs else runtime
    out["meta"] = np.array(
        json.dumps(
            {
                "machine": platform.machine(),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "runtime": loaded,
                "runtime_version": runtime_version(loaded),
            }
        )
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, required=True, help="folder with models + manifests")
    p.add_argument("--photos", type=Path, required=True, help="folder of photos")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")
    p.add_argument("--runtime", default="auto", help="ai_edge_litert | tflite_runtime | auto")
    p.add_argument("--crops", type=Path, help="the other machine's probe .npz (its crops)")
    p.add_argument("--embedders", nargs="+", default=list(EMBEDDERS))
    args = p.parse_args(argv)
    other = None
    if args.crops:
        with np.load(args.crops) as z:
            other = {Path(e).stem: z[f"{Path(e).stem}.crops"] for e in args.embedders}
    res = probe(args.models, args.photos, args.runtime, args.embedders, other)
    np.savez_compressed(args.out, **res)
    print(f"probe: wrote {args.out} ({json.loads(str(res['meta']))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
