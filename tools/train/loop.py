"""The training loop: P x K batches, the triplet loss, warm-up + cosine LR, early stopping.

Every ``eval_every`` steps the validation people's TAR at FAR 1e-3 is
measured (float model, unaugmented crops); the best weights so far are kept
and training stops after ``patience`` evaluations without a better one. The
state (weights, optimizer, step, history, best) is checkpointed at each
evaluation, so an interrupted run resumes where it stopped, with the same
batches: the batch of step ``s`` is drawn from ``default_rng([seed, s])``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import FacegateError
from tools.train.data import Crops, augment_crop, pk_batch
from tools.train.loss import l2_normalize, triplet_loss
from tools.train.metrics import held_out, selection_score
from tools.train.model import StartModel

F32 = npt.NDArray[np.float32]
EVAL_FAR = 1e-3  # early stopping watches the validation TAR at this FAR


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """The learning rate of ``step`` (0-based): linear warm-up, then cosine decay.

    ``peak * (step + 1) / warmup`` for ``step < warmup``; afterwards
    ``floor + (peak - floor) * (1 + cos(pi * s / S)) / 2`` with
    ``s = step - warmup`` and ``S = max(total - warmup, 1)``: from ``peak``
    down to ``floor`` at the last step.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    s = min(step - warmup, max(total - warmup, 1))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * s / max(total - warmup, 1)))


@dataclass(frozen=True)
class LoopConfig:
    """The settings of the loop itself (recorded in the report and the checkpoint)."""

    steps: int = 1500
    people_per_batch: int = 16  # P
    photos_per_person: int = 4  # K
    alpha: float = 0.2
    mining: str = "semi-hard"
    # Fine-tuning a trained embedder: 1e-4 wrecked SFace's validation TAR within 50 steps
    # on LFW (0.977 -> 0.942), 1e-5 improved it (docs/training.md).
    lr: float = 1e-5
    warmup: int = 50
    eval_every: int = 50
    patience: int = 8
    seed: int = 0
    max_shift: float = 0.05
    max_brightness: float = 25.0
    eval_max_per_person: int = 20


@dataclass
class LoopState:
    """What a checkpoint holds besides the weights: where we are and what happened."""

    step: int = 0
    best_step: int = 0
    best_score: float = -1.0
    since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # per step
    evals: list[dict[str, Any]] = field(default_factory=list)  # per evaluation
    stopped: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0


def digest(settings: dict[str, Any]) -> str:
    """A short hash of the settings a checkpoint must agree with to be resumed."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class Trainer:
    """One fine-tuning run of ``start`` on ``train`` people, selecting on ``val`` people."""

    def __init__(
        self,
        start: StartModel,
        train: Crops,
        val: Crops,
        cfg: LoopConfig,
        ckpt_dir: Path,
        settings_digest: str,
    ) -> None:
        import keras

        self.start, self.cfg, self.ckpt_dir = start, cfg, ckpt_dir
        self.train, self.val = train, val
        self.rows = train.per_person()
        self.people = sorted(self.rows)
        self.model = start.model
        self.vars = list(self.model.trainable_variables)
        self.optimizer = keras.optimizers.Adam(learning_rate=cfg.lr)
        self.optimizer.build(self.vars)
        self.settings_digest = settings_digest
        self.state = LoopState()
        self._step_fn = self._make_step()
        self._embed_fn = self._make_embed()

    # -- TensorFlow functions ------------------------------------------------------
    def _inputs(self, x: Any) -> Any:
        if self.start.standardize == "per-image":
            from tools.facenet_keras import standardize_per_image

            return standardize_per_image(x, self.start.preprocessing.std)
        return x

    def _make_step(self) -> Callable[[Any, Any], tuple[Any, Any]]:
        import tensorflow as tf

        model, opt, tvars, cfg = self.model, self.optimizer, self.vars, self.cfg

        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
        def step(x: Any, y: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                e = l2_normalize(model(self._inputs(x), training=False))
                tl = triplet_loss(e, y, cfg.alpha, cfg.mining)
            grads = tape.gradient(tl.loss, tvars)
            opt.apply_gradients(zip(grads, tvars, strict=True))
            return tl.loss, tl.active_fraction

        return step  # type: ignore[no-any-return]

    def _make_embed(self) -> Callable[[Any], Any]:
        import tensorflow as tf

        model = self.model

        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
        def embed(x: Any) -> Any:
            return l2_normalize(model(self._inputs(x), training=False))

        return embed  # type: ignore[no-any-return]

    # -- data ------------------------------------------------------------------------
    def _preprocess(self, crops: npt.NDArray[np.uint8]) -> F32:
        from tools.quantize import preprocess

        return preprocess(crops, self.start.preprocessing)

    def batch(self, step: int) -> tuple[F32, npt.NDArray[np.int32]]:
        """The augmented, preprocessed batch of ``step`` (the same on every run and resume)."""
        rng = np.random.default_rng([self.cfg.seed, step])
        rows, labels = pk_batch(
            self.rows, self.people, self.cfg.people_per_batch, self.cfg.photos_per_person, rng
        )
        aug = np.stack(
            [
                augment_crop(self.train.crops[r], rng, self.cfg.max_shift, self.cfg.max_brightness)
                for r in rows
            ]
        )
        return self._preprocess(aug), labels

    def embed(self, crops: Crops, batch: int = 64) -> F32:
        """Unit embeddings of unaugmented crops with the current weights."""
        out = [
            np.asarray(self._embed_fn(self._preprocess(crops.crops[i : i + batch])))
            for i in range(0, len(crops), batch)
        ]
        dim = int(self.model.output_shape[-1])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)

    # -- evaluation and checkpoints --------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """The validation people's numbers now; keeps the weights when they are the best.

        The score is the validation TAR at FAR 1e-3 (at the strictest FAR the
        pairs resolve when they are fewer than 1000); the first evaluation
        (the starting weights) is the first best.
        """
        emb = self.embed(self.val)
        held = held_out(emb, self.val.labels)
        score, far = selection_score(emb, self.val.labels, EVAL_FAR)
        st = self.state
        rec = {"step": st.step, "val_score": score, "val_score_far": far, "val": held.to_json()}
        first = not st.evals
        st.evals.append(rec)
        value = -1.0 if score is None else float(score)
        if first or value > st.best_score:
            st.best_score, st.best_step, st.since_best = value, st.step, 0
            self.model.save_weights(self.ckpt_dir / "best.weights.h5")
        else:
            st.since_best += 1
        return rec

    def save(self) -> None:
        """Weights, optimizer variables and the loop state (written last: it marks a
        complete checkpoint)."""
        d = self.ckpt_dir
        self.model.save_weights(d / "last.weights.h5")
        np.savez(d / "optimizer.npz", *[np.asarray(v) for v in self.optimizer.variables])
        data = {"digest": self.settings_digest, "state": asdict(self.state)}
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(d / "state.json")

    def restore(self) -> bool:
        """Load the checkpoint in ``ckpt_dir``; False when there is none."""
        path = self.ckpt_dir / "state.json"
        if not path.is_file():
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("digest") != self.settings_digest:
            raise FacegateError(
                f"{self.ckpt_dir}: the checkpoint was made with other settings (data, model, "
                "seed or training flags); resume with the same ones, or use another --out"
            )
        self.model.load_weights(self.ckpt_dir / "last.weights.h5")
        with np.load(self.ckpt_dir / "optimizer.npz") as z:
            values = [z[f"arr_{i}"] for i in range(len(z.files))]
        for v, a in zip(self.optimizer.variables, values, strict=True):
            v.assign(a)
        self.state = LoopState(**data["state"])
        return True

    def load_best(self) -> None:
        self.model.load_weights(self.ckpt_dir / "best.weights.h5")

    # -- the loop ----------------------------------------------------------------------------
    def run(self, progress: bool = True, stop_after: int | None = None) -> LoopState:
        """Train until ``steps``, or until early stopping; returns the final state.

        ``stop_after``: return after that step with a checkpoint but without
        finishing (what an interrupted run leaves; for tests).
        """
        cfg, st = self.cfg, self.state
        if not st.evals:
            self.evaluate()
            self.save()
        bar = _bar(cfg.steps, st.step, progress)
        t0, c0 = time.monotonic() - st.wall_s, time.process_time() - st.cpu_s
        while st.step < cfg.steps and not st.stopped:
            self._one_step(bar)
            if st.step % cfg.eval_every == 0 or st.step == cfg.steps:
                self.evaluate()
                if bar is not None:
                    bar.set_postfix_str(self._postfix(), refresh=False)
                if st.since_best >= cfg.patience:
                    st.stopped = (
                        f"early stop at step {st.step}: no better validation TAR in "
                        f"{cfg.patience} evaluations (best at step {st.best_step})"
                    )
                self._checkpoint(t0, c0)
            if stop_after is not None and st.step >= stop_after:
                break
        if bar is not None:
            bar.close()
        if not st.stopped and st.step >= cfg.steps:
            st.stopped = f"reached {cfg.steps} steps (best at step {st.best_step})"
        self._checkpoint(t0, c0)
        return st

    def _checkpoint(self, t0: float, c0: float) -> None:
        self.state.wall_s = time.monotonic() - t0
        self.state.cpu_s = time.process_time() - c0
        self.save()

    def _one_step(self, bar: Any) -> None:
        st = self.state
        lr = lr_at(st.step, self.cfg.steps, self.cfg.lr, self.cfg.warmup)
        self.optimizer.learning_rate.assign(lr)
        x, y = self.batch(st.step)
        loss, active = self._step_fn(x, y)
        st.step += 1
        st.history.append({"step": st.step, "loss": float(loss), "active": float(active), "lr": lr})
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(self._postfix(), refresh=False)

    def _postfix(self) -> str:
        st = self.state
        last = st.history[-1] if st.history else {"loss": 0.0, "active": 0.0}
        best = "n/a" if st.best_score < 0 else f"{st.best_score:.4f}"
        return f"loss {last['loss']:.4f} active {100 * last['active']:.0f}% val TAR {best}"


def _bar(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return None
    import sys

    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=done, desc="training", unit="step", file=sys.stderr)
