"""``python -m tools.train``: the run from a folder of people to a calibrated int8 model.

Steps, each checked before the next: the photos (2+ people, 2+ photos
each), the starting model (readable, outputs an embedding), the faces
(the device's detector and alignment), the people split, the loop
(:mod:`tools.train.loop`), the export (``model.keras`` and a SavedModel),
then optionally :mod:`tools.quantize` (``--quantize``) and
:mod:`tools.calibrate` (``--calibrate``, on the held-aside people), and the
report (:mod:`tools.train.report`). Every bad input is one line before
training starts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import tools.train.data as data
import tools.train.metrics as metrics
from edge.errors import FacegateError
from edge.imageio import read_image
from edge.vision.manifest import Preprocessing
from tools._common import run_tool
from tools.train.loop import LoopConfig, Trainer, digest
from tools.train.loss import MINING
from tools.train.model import StartModel, export_saved_model, load_start, set_trainable

log = logging.getLogger("tools.train")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path("reports/train")
TRAIN_VERSION = "facegate-train/1"
MAX_QUANT_PHOTOS = 400  # int8 calibration photos (training people only)
# A model file's preprocessing unless flags say otherwise: FaceNet's.
FILE_PREPROCESSING = Preprocessing(size=(160, 160), mean=127.5, std=128.0)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run needs (the CLI fills it from flags)."""

    folder: Path
    model: str = "sface"
    out: Path = DEFAULT_OUT
    name: str = ""
    loop: LoopConfig = field(default_factory=LoopConfig)
    trainable_blocks: int = 3
    holdout: float = 0.2
    val_share: float = 0.5
    skip_few: bool = False
    resume: bool = False
    quantize: bool = False
    calibrate: bool = False
    detector: Path = REPO / "models" / "face_detection_short_range.tflite"
    models_dir: Path = REPO / "models"
    min_face: int = 40
    preprocessing: Preprocessing = FILE_PREPROCESSING
    alignment: str = "facenet160"
    standardize: str = "none"
    show_progress: bool = True

    @property
    def output_name(self) -> str:
        if self.name:
            return self.name
        stem = self.model if self.model in ("sface", "facenet") else Path(self.model).stem
        return f"{stem}_ft"


class Clock:
    """Wall and CPU seconds per phase (CPU: this process, all its threads)."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self._t0, self._c0 = time.monotonic(), time.process_time()

    def mark(self, phase: str) -> None:
        t, c = time.monotonic(), time.process_time()
        self.phases[phase] = {"wall_s": round(t - self._t0, 1), "cpu_s": round(c - self._c0, 1)}
        self._t0, self._c0 = t, c

    def total(self) -> dict[str, float]:
        return {
            "wall_s": round(sum(p["wall_s"] for p in self.phases.values()), 1),
            "cpu_s": round(sum(p["cpu_s"] for p in self.phases.values()), 1),
        }


@dataclass
class Prepared:
    """The checked inputs of a run."""

    start: StartModel
    crops: data.Crops
    split: data.Split
    photos: dict[str, list[Path]]
    no_face: int
    left_out: list[str]
    trainable: list[str]


def precheck(cfg: TrainConfig) -> dict[str, list[Path]]:
    """The checks that need no model: the photos, the split, the batch shape, the detector.

    Run before anything is written or TensorFlow is loaded; returns the photos.
    """
    if cfg.calibrate and not cfg.quantize:
        raise FacegateError("--calibrate needs --quantize (it calibrates the int8 model)")
    photos = data.list_photos(cfg.folder, 2, cfg.skip_few)
    # Fail fast on a split that cannot work, before the minutes of face detection.
    data.split_people(list(photos), cfg.holdout, cfg.loop.seed, cfg.val_share)
    if cfg.loop.photos_per_person < 2 or cfg.loop.people_per_batch < 2:
        raise FacegateError("--batch-people and --batch-photos must be at least 2")
    if not cfg.detector.is_file():
        raise FacegateError(f"{cfg.detector}: no detector model (python -m tools.models build)")
    return photos


def prepare(cfg: TrainConfig, clock: Clock) -> Prepared:
    """Check the photos, load the model, align the faces and split the people.

    Every bad input raises a one-line :class:`FacegateError` here, before
    any training.
    """
    photos = precheck(cfg)
    start = load_start(cfg.model, cfg.models_dir, cfg.preprocessing, cfg.alignment, cfg.standardize)
    trainable = set_trainable(start, cfg.trainable_blocks)
    clock.mark("model")
    crops = data.align_photos(
        photos,
        cfg.detector,
        start.size,
        start.alignment,
        cfg.min_face,
        cfg.out / "cache" / "crops.npz",
        cfg.show_progress,
    )
    n_photos = sum(len(v) for v in photos.values())
    crops, left_out = data.drop_few_faces(crops, 2, cfg.skip_few)
    split = data.split_people(sorted(set(crops.labels)), cfg.holdout, cfg.loop.seed, cfg.val_share)
    clock.mark("faces")
    return Prepared(start, crops, split, photos, n_photos - len(crops), left_out, trainable)


def settings(cfg: TrainConfig, prep: Prepared) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint."""
    return {
        "version": TRAIN_VERSION,
        "model": cfg.model,
        "folder": str(cfg.folder.resolve()),
        "loop": asdict(cfg.loop),
        "trainable": prep.trainable,
        "split": asdict(prep.split),
        "faces": len(prep.crops),
        "preprocessing": asdict(prep.start.preprocessing),
        "standardize": prep.start.standardize,
    }


def _checkpoint_dir(cfg: TrainConfig) -> Path:
    d = cfg.out / "checkpoints"
    if (d / "state.json").is_file() and not cfg.resume:
        raise FacegateError(
            f"{cfg.out} holds a checkpoint of an earlier run: pass --resume to continue it, "
            "or choose another --out"
        )
    if cfg.resume and not (d / "state.json").is_file():
        raise FacegateError(f"--resume: no checkpoint in {d}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _before(
    trainer: Trainer, test: data.Crops, ckpt: Path, resumed: bool
) -> npt.NDArray[np.float32]:
    """The test people's embeddings with the starting weights (kept for a resumed run)."""
    path = ckpt / "before.npy"
    if resumed and path.is_file():
        return np.asarray(np.load(path), dtype=np.float32)
    emb = trainer.embed(test)
    np.save(path, emb)
    return emb


def quantize_trained(cfg: TrainConfig, prep: Prepared, saved_model: Path) -> dict[str, Path]:
    """``tools.quantize`` on the SavedModel, calibrated on training people's photos only."""
    from tools.quantize import QuantizeConfig, quantize

    rows = [i for i, lab in enumerate(prep.crops.labels) if lab in set(prep.split.train)]
    pick = [rows[int(j)] for j in np.linspace(0, len(rows) - 1, min(MAX_QUANT_PHOTOS, len(rows)))]
    images = []
    for i in sorted(set(pick)):
        p = prep.crops.paths[i]
        images.append((prep.crops.labels[i], f"{prep.crops.labels[i]}/{p.name}", read_image(p)))
    start = prep.start
    qcfg = QuantizeConfig(
        model=saved_model,
        out_dir=cfg.out,
        name=cfg.output_name,
        images=images,
        preprocessing=start.preprocessing,
        alignment=start.alignment,
        detector=cfg.detector,
        min_face=cfg.min_face,
        standardize=start.standardize,
        show_progress=cfg.show_progress,
        extra={
            "trained_by": TRAIN_VERSION,
            "start_model": start.source,
            "trainable_blocks": prep.trainable,
            "calibration_set": "training people's photos",
        },
    )
    res = quantize(qcfg)
    return {"float32": res.float_model, "int8": res.int8_model, "quantize_report": res.report_md}


def _held_items(prep: Prepared, people: Sequence[str]) -> list[Any]:
    from tools._faces import LabelledImage

    keep = set(people)
    return [LabelledImage(p, f) for p in sorted(prep.photos) if p in keep for f in prep.photos[p]]


def calibrate_trained(cfg: TrainConfig, prep: Prepared, int8: Path) -> dict[str, Path]:
    """``tools.calibrate`` on the held-aside people (never trained on) into the int8 manifest."""
    from tools import calibrate, stats
    from tools._faces import FaceEmbedder

    fe = FaceEmbedder(int8, cfg.detector, cfg.min_face)
    faces = fe.embed_items(
        _held_items(prep, prep.split.val + prep.split.test), None, cfg.show_progress
    )
    res = calibrate.calibrate_faces(faces, far=1e-3)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    source = (
        f"tools.calibrate via tools.train {today} on {len(set(faces.labels))} held-aside people "
        f"of {cfg.folder.resolve().name} (all pairs; {res.n_genuine} genuine, "
        f"{res.n_impostor} impostor pairs; {res.binding} {res.target_far:.3g})"
    )
    written = calibrate.write_manifest(int8, res, source)
    gen, imp = stats.pair_distances(faces.embeddings, faces.labels)
    dist = calibrate.Distances(gen, imp, faces, "all pairs")
    files = calibrate.write_report(
        res, dist, cfg.out / "calibration", int8.stem, written, cfg.folder.name, source
    )
    return {"calibration_report": files["md"]}


def device_numbers(model: Path, cfg: TrainConfig, test: data.Crops) -> dict[str, Any] | None:
    """The test people's numbers with a TFLite model on the device path (re-detected photos)."""
    from tools._faces import FaceEmbedder, LabelledImage

    if not model.is_file():
        return None
    fe = FaceEmbedder(model, cfg.detector, cfg.min_face)
    items = [LabelledImage(lab, p) for lab, p in zip(test.labels, test.paths, strict=True)]
    faces = fe.embed_items(items, None, cfg.show_progress, desc=f"embedding ({model.name})")
    return metrics.held_out(faces.embeddings, faces.labels).to_json()


def verdict(before: dict[str, Any], after: dict[str, Any], best_step: int) -> str:
    """One honest sentence on the float test numbers."""
    if best_step == 0:
        return (
            "fine-tuning never beat the starting model on the validation people; the output "
            "is the starting model (no change)"
        )
    b, a = before["tar_at_far"].get("0.001"), after["tar_at_far"].get("0.001")
    if a is None or b is None:
        return "the test people are too few to measure TAR at FAR 1e-3"
    delta = 100 * (a - b)
    word = "helped" if delta > 0 else ("made it worse" if delta < 0 else "changed nothing")
    return f"fine-tuning {word} on the test people: TAR at FAR 1e-3 {delta:+.1f} points"


def run(cfg: TrainConfig) -> dict[str, Any]:
    """The whole run; returns the report (also written to ``cfg.out``)."""
    import tools.train.report as report

    clock = Clock()
    prep = prepare(cfg, clock)
    ckpt = _checkpoint_dir(cfg)
    cap = cfg.loop.eval_max_per_person
    train = prep.crops.of(prep.split.train)
    val = prep.crops.of(prep.split.val, cap)
    test = prep.crops.of(prep.split.test, cap)
    trainer = Trainer(prep.start, train, val, cfg.loop, ckpt, digest(settings(cfg, prep)))
    resumed = cfg.resume and trainer.restore()
    before = _before(trainer, test, ckpt, resumed)
    state = trainer.run(cfg.show_progress)
    clock.mark("training")
    trainer.load_best()
    after = trainer.embed(test)
    outputs: dict[str, Path] = {"keras": cfg.out / f"{cfg.output_name}.keras"}
    prep.start.model.save(outputs["keras"])
    outputs["saved_model"] = export_saved_model(
        prep.start.model, cfg.out / f"{cfg.output_name}_saved_model"
    )
    clock.mark("export")
    rep = _report(cfg, prep, state, before, after, test, resumed)
    if cfg.quantize:
        outputs.update(quantize_trained(cfg, prep, outputs["saved_model"]))
        clock.mark("quantize")
        if cfg.calibrate:
            outputs.update(calibrate_trained(cfg, prep, outputs["int8"]))
            clock.mark("calibrate")
        rep["test"]["int8_after"] = device_numbers(outputs["int8"], cfg, test)
        if prep.start.name in ("sface", "facenet"):
            shipped = cfg.models_dir / f"{prep.start.name}_int8.tflite"
            rep["test"]["int8_before"] = device_numbers(shipped, cfg, test)
        clock.mark("device numbers")
    rep["timing"] = _timing(clock, state)
    rep["outputs"] = {k: str(v) for k, v in outputs.items()}
    files = report.write(
        rep, cfg.out, metrics.distances(before, test.labels), metrics.distances(after, test.labels)
    )
    rep["report_files"] = {k: str(v) for k, v in files.items()}
    return rep


def _timing(clock: Clock, state: Any) -> dict[str, Any]:
    total = clock.total()
    return {
        "phases": clock.phases,
        "total_wall_s": total["wall_s"],
        "total_cpu_s": total["cpu_s"],
        "train_wall_s": round(state.wall_s, 1),
        "train_cpu_s": round(state.cpu_s, 1),
        "cpus": os.cpu_count(),
    }


def _report(
    cfg: TrainConfig,
    prep: Prepared,
    state: Any,
    before: npt.NDArray[np.float32],
    after: npt.NDArray[np.float32],
    test: data.Crops,
    resumed: bool,
) -> dict[str, Any]:
    fb = metrics.held_out(before, test.labels).to_json()
    fa = metrics.held_out(after, test.labels).to_json()
    return {
        "tool_version": TRAIN_VERSION,
        "model": {
            "name": cfg.output_name,
            "start_name": prep.start.name,
            "start": prep.start.source,
            "trainable_blocks": prep.trainable,
            "preprocessing": asdict(prep.start.preprocessing),
            "alignment": prep.start.alignment,
            "standardize": prep.start.standardize,
        },
        "data": {
            "folder": str(cfg.folder),
            "people": len(set(prep.crops.labels)),
            "faces": len(prep.crops),
            "no_face": prep.no_face,
            "left_out": prep.left_out,
        },
        "split": asdict(prep.split),
        "loop": asdict(cfg.loop),
        "training": {
            "steps_done": state.step,
            "best_step": state.best_step,
            "best_val_score": state.best_score,
            "stopped": state.stopped,
            "resumed": resumed,
            "evals": state.evals,
            "history": state.history,
        },
        "test": {"float_before": fb, "float_after": fa},
        "verdict": verdict(fb, fa, state.best_step),
    }


# -- CLI ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = LoopConfig()
    p = argparse.ArgumentParser(
        prog="python -m tools.train",
        description="Fine-tune a face embedder with the triplet loss on a folder of people "
        "(<folder>/<Person>/<photo>), then optionally quantise and calibrate it.",
    )
    p.add_argument("folder", type=Path, help="one sub-folder of photos per person")
    p.add_argument(
        "--model", default="sface", help="sface (default), facenet, or a .keras/.h5/SavedModel"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--name", default="", help="output model name (default: <model>_ft)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--batch-people", type=int, default=d.people_per_batch, help="P per batch")
    g.add_argument("--batch-photos", type=int, default=d.photos_per_person, help="K per person")
    g.add_argument("--alpha", type=float, default=d.alpha, help="triplet margin (squared L2)")
    g.add_argument("--mining", choices=MINING, default=d.mining)
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (Adam)")
    g.add_argument("--warmup", type=int, default=d.warmup, help="warm-up steps")
    g.add_argument("--trainable-blocks", type=int, default=3, help="train the last N blocks")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="steps per evaluation")
    g.add_argument("--patience", type=int, default=d.patience, help="evaluations to wait")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--holdout", type=float, default=0.2, help="share of people held aside")
    g.add_argument("--val-share", type=float, default=0.5, help="of those, for early stopping")
    g.add_argument("--eval-max-per-person", type=int, default=d.eval_max_per_person)
    g.add_argument("--skip-few", action="store_true", help="leave out people under 2 photos")
    g.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    o = p.add_argument_group("output")
    o.add_argument("--quantize", action="store_true", help="then run tools.quantize")
    o.add_argument("--calibrate", action="store_true", help="then run tools.calibrate")
    f = p.add_argument_group("a model file's preprocessing (the builtins know theirs)")
    f.add_argument("--input-size", type=int, default=160)
    f.add_argument("--mean", type=float, default=127.5)
    f.add_argument("--std", type=float, default=128.0)
    f.add_argument("--alignment", default="facenet160")
    f.add_argument("--standardize", choices=("none", "per-image"), default="none")
    p.add_argument("--detector", type=Path, default=TrainConfig.detector)
    p.add_argument("--min-face", type=int, default=40)
    p.add_argument("--no-progress", action="store_true")
    return p


def _check_ranges(a: argparse.Namespace) -> None:
    for name, v, lo in (
        ("steps", a.steps, 1),
        ("eval-every", a.eval_every, 1),
        ("patience", a.patience, 1),
        ("trainable-blocks", a.trainable_blocks, 1),
        ("eval-max-per-person", a.eval_max_per_person, 2),
    ):
        if v < lo:
            raise FacegateError(f"--{name} must be at least {lo}, got {v}")
    if a.warmup < 0 or a.warmup >= a.steps:
        raise FacegateError(f"--warmup must be in 0..steps-1, got {a.warmup}")
    if not 0.0 < a.lr < 1.0 or a.alpha <= 0.0:
        raise FacegateError("--lr must be in (0, 1) and --alpha positive")
    if not 0.0 < a.val_share < 1.0:
        raise FacegateError(f"--val-share must be between 0 and 1, got {a.val_share}")
    from edge.vision.align import TEMPLATES

    if a.alignment not in TEMPLATES:
        raise FacegateError(f"--alignment must be one of {sorted(TEMPLATES)}, not {a.alignment!r}")
    if not 16 <= a.input_size <= 1024 or a.std <= 0:
        raise FacegateError("--input-size must be in 16..1024 and --std positive")


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    _check_ranges(a)
    loop = replace(
        LoopConfig(),
        steps=a.steps,
        people_per_batch=a.batch_people,
        photos_per_person=a.batch_photos,
        alpha=a.alpha,
        mining=a.mining,
        lr=a.lr,
        warmup=a.warmup,
        eval_every=a.eval_every,
        patience=a.patience,
        seed=a.seed,
        eval_max_per_person=a.eval_max_per_person,
    )
    return TrainConfig(
        folder=a.folder,
        model=a.model,
        out=a.out,
        name=a.name,
        loop=loop,
        trainable_blocks=a.trainable_blocks,
        holdout=a.holdout,
        val_share=a.val_share,
        skip_few=a.skip_few,
        resume=a.resume,
        quantize=a.quantize,
        calibrate=a.calibrate,
        detector=a.detector,
        min_face=a.min_face,
        preprocessing=Preprocessing((a.input_size, a.input_size), a.mean, a.std),
        alignment=a.alignment,
        standardize=a.standardize,
        show_progress=not a.no_progress and sys.stderr.isatty(),
    )


def summary(rep: dict[str, Any]) -> str:
    from tools.train.report import render_markdown

    return render_markdown(rep) + "report: " + ", ".join(rep["report_files"].values())


def _quiet() -> None:
    """TensorFlow's log lines off the terminal; its oneDNN kernels stay on (twice as fast
    for training here; ``tools.models`` turns them off only for reproducible builds)."""
    for key, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("GLOG_minloglevel", "3")):
        os.environ.setdefault(key, value)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _main(argv: Sequence[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet()
    cfg = config_from_args(build_parser().parse_args(argv))
    print(summary(_run_quietly(cfg)))
    return 0


def _run_quietly(cfg: TrainConfig) -> dict[str, Any]:
    """:func:`run` with TensorFlow's and TFLite's native log lines in ``<out>/native.log``
    (the progress bars and our own messages still reach the terminal)."""
    from tools.models import native_stderr_to

    precheck(cfg)  # bad photos or flags: one line, and nothing written
    cfg.out.mkdir(parents=True, exist_ok=True)
    log_file = cfg.out / "native.log"
    try:
        with native_stderr_to(log_file):
            return run(cfg)
    except FacegateError:
        raise  # bad input: its one line says it all
    except BaseException:
        print(f"train: native log lines of this run: {log_file}", file=sys.stderr)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: bad input is one line on stderr and exit code 2."""
    return run_tool("train", _main, argv)
