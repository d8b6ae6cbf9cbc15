"""tools.train: the triplet loss, the mining, the split, the loop, and bad input.

The loss and the mining are checked on numbers worked out by hand (the same
example as docs/training.md) and against a brute-force search; the loop on
a tiny network (resume must give the very weights an uninterrupted run
gives); bad input on the CLI (one line, exit 2, before any training). The
real fine-tune of a few ../shared/lfw people is in test_train_e2e.py.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from edge.errors import FacegateError
from edge.vision.manifest import Preprocessing

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
# Keras 3 internals under numpy 2 (not our code); one line per weight otherwise.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

from tools.train import data, loop, metrics, model  # noqa: E402  (needs TensorFlow)
from tools.train.loss import (  # noqa: E402
    semi_hard_negatives,
    squared_distances,
    triplet_loss,
)

# docs/training.md's worked example: anchor, positive (same person), negative.
A = [1.0, 0.0, 0.0, 0.0]
P = [0.6, 0.8, 0.0, 0.0]
N = [0.8, 0.0, 0.6, 0.0]


def _np(x: object) -> np.ndarray:
    return np.asarray(x)


# -- the loss ---------------------------------------------------------------------------------


def test_squared_distances_of_the_worked_example() -> None:
    d = _np(squared_distances(np.array([A, P, N], np.float32)))
    # ||a-p||^2 = 0.4^2 + 0.8^2 = 0.8;  ||a-n||^2 = 0.2^2 + 0.6^2 = 0.4;
    # ||p-n||^2 = 0.2^2 + 0.8^2 + 0.6^2 = 1.04
    assert d[0, 1] == pytest.approx(0.8, abs=1e-6)
    assert d[0, 2] == pytest.approx(0.4, abs=1e-6)
    assert d[1, 2] == pytest.approx(1.04, abs=1e-6)
    assert np.allclose(np.diag(d), 0.0) and np.allclose(d, d.T)


def test_loss_of_one_triplet_by_hand() -> None:
    """L = max(0.8 - 0.4 + 0.2, 0) = 0.6 for (a, p, n); (p, a) has the semi-hard n: 0."""
    e = np.array([A, P, N], np.float32)
    labels = np.array([0, 0, 1])
    # Anchor-positive pairs (a, p) and (p, a). For (a, p) no negative is farther than
    # p (0.4 < 0.8): the farthest negative, n, gives 0.8 - 0.4 + 0.2 = 0.6. For (p, a)
    # n is farther (1.04 > 0.8) and semi-hard would need < 0.8 + 0.2: 0.8 - 1.04 + 0.2 < 0.
    s = triplet_loss(e, labels, alpha=0.2, mining="semi-hard", reduction="sum")
    assert float(s.loss) == pytest.approx(0.6, abs=1e-6)
    assert float(s.triplets) == 2 and float(s.active) == 1
    assert float(s.active_fraction) == pytest.approx(0.5)
    mean = triplet_loss(e, labels, alpha=0.2, mining="semi-hard")
    assert float(mean.loss) == pytest.approx(0.3, abs=1e-6)
    # A larger margin makes (p, a, n) active too: 0.8 - 1.04 + 0.5 = 0.26; (a, p, n): 0.9.
    big = triplet_loss(e, labels, alpha=0.5, mining="semi-hard", reduction="sum")
    assert float(big.loss) == pytest.approx(0.9 + 0.26, abs=1e-6)
    # Batch-all: the same two triplets here; the mean is over the active ones.
    ba = triplet_loss(e, labels, alpha=0.2, mining="batch-all")
    assert float(ba.loss) == pytest.approx(0.6, abs=1e-6)
    assert float(ba.active_fraction) == pytest.approx(0.5)


def test_gradient_pulls_the_positive_and_pushes_the_negative() -> None:
    """dL/dp = 2(p - a) and dL/dn = -2(n - a) for the active triplet (a, p, n)."""
    e = tf.Variable(np.array([A, P, N], np.float32))
    with tf.GradientTape() as tape:
        loss = triplet_loss(e, np.array([0, 0, 1]), 0.2, "batch-all", "sum").loss
    g = _np(tape.gradient(loss, e))
    a, p, n = (np.array(v) for v in (A, P, N))
    assert np.allclose(g[1], 2 * (p - a), atol=1e-6)  # descent moves p towards a
    assert np.allclose(g[2], -2 * (n - a), atol=1e-6)  # and n away from a
    assert np.allclose(g[0], 2 * (a - p) - 2 * (a - n), atol=1e-6)


def test_inactive_triplets_give_zero_loss() -> None:
    far = [0.0, 0.0, 0.0, 1.0]  # ||a - far||^2 = 2 > 0.8 + 0.2
    t = triplet_loss(np.array([A, P, far], np.float32), np.array([0, 0, 1]), 0.2, "semi-hard")
    # (a, p): far is semi-hard but outside the margin; (p, a): ||p - far||^2 = 2 as well.
    assert float(t.loss) == 0.0 and float(t.active_fraction) == 0.0


def _brute_force_semi_hard(d: np.ndarray, labels: list[int]) -> np.ndarray:
    n = len(labels)
    out = -np.ones((n, n), dtype=int)
    for a, p in itertools.permutations(range(n), 2):
        if labels[a] != labels[p]:
            continue
        negs = [k for k in range(n) if labels[k] != labels[a]]
        if not negs:
            continue
        farther = [k for k in negs if d[a, k] > d[a, p]]
        out[a, p] = (
            min(farther, key=lambda k: d[a, k]) if farther else max(negs, key=lambda k: d[a, k])
        )
    return out


def test_semi_hard_selection_known_answer() -> None:
    """Points on a line: person 0 at 0 and 1, person 1 at 0.5, 1.2 and 3, person 2 at 1.1."""
    x = np.array([[0.0], [1.0], [0.5], [1.2], [3.0], [1.1]], np.float32)
    labels = [0, 0, 1, 1, 1, 2]
    d = _np(squared_distances(x))
    idx = _np(semi_hard_negatives(d, np.array(labels)))
    # Anchor 0, positive 1 (D = 1): negatives at D 0.25, 1.44, 9, 1.21 -> the nearest
    # farther one is row 5 (1.1, D = 1.21), not row 3 (1.2, D = 1.44) and not 0.5 (closer).
    assert idx[0, 1] == 5
    # Anchor 1, positive 0 (D = 1): negatives at D 0.25, 0.04, 4, 0.01 -> row 4 (3.0).
    assert idx[1, 0] == 4
    # Anchor 3 (1.2), positive 2 (0.5, D = 0.49): negatives 0 (1.44), 1 (0.04), 5 (0.01)
    # -> 0 is the only farther one.
    assert idx[3, 2] == 0
    # Anchor 2 (0.5), positive 3 (1.2, D = 0.49): negatives 0 (0.25), 1 (0.25), 5 (0.36):
    # none farther -> the farthest negative, row 5.
    assert idx[2, 3] == 5
    # Not an anchor-positive pair (different people, or itself): -1.
    assert idx[0, 2] == -1 and idx[0, 0] == -1 and idx[5, 5] == -1
    assert (idx == _brute_force_semi_hard(d, labels)).all()


def test_semi_hard_matches_brute_force_on_random_batches() -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        labels = list(np.repeat(np.arange(4), 3))
        e = rng.normal(size=(12, 8)).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        d = _np(squared_distances(e))
        got = _np(semi_hard_negatives(d, np.array(labels)))
        assert (got == _brute_force_semi_hard(d, labels)).all()


def test_unknown_mining_is_refused() -> None:
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(np.eye(2, dtype=np.float32), np.array([0, 1]), mining="hardest")


# -- learning rate ---------------------------------------------------------------------------


def test_learning_rate_warmup_then_cosine() -> None:
    assert loop.lr_at(0, 100, 1e-3, 10) == pytest.approx(1e-4)
    assert loop.lr_at(9, 100, 1e-3, 10) == pytest.approx(1e-3)
    assert loop.lr_at(10, 100, 1e-3, 10) == pytest.approx(1e-3)  # cosine starts at the peak
    assert loop.lr_at(55, 100, 1e-3, 10) == pytest.approx(0.5e-3)  # half way: cos(pi/2)
    assert loop.lr_at(100, 100, 1e-3, 10) == pytest.approx(0.0, abs=1e-15)
    assert loop.lr_at(100, 100, 1e-3, 10, floor=1e-5) == pytest.approx(1e-5)
    s = 10 + 30
    assert loop.lr_at(s, 100, 1e-3, 10) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi / 3)))


# -- people, batches, augmentation -----------------------------------------------------------------


def test_people_split_never_leaks() -> None:
    names = [f"person_{i:03d}" for i in range(57)]
    for seed in range(20):
        s = data.split_people(names, 0.2, seed)
        train, val, test = set(s.train), set(s.val), set(s.test)
        assert not train & val and not train & test and not val & test
        assert train | val | test == set(names)
        assert len(val) + len(test) == round(0.2 * 57)
        assert data.split_people(names, 0.2, seed) == s  # the seed decides it all
    assert data.split_people(names, 0.2, 0) != data.split_people(names, 0.2, 1)


def test_batches_hold_only_training_people() -> None:
    """The crops a batch is made of belong to training people only, P x K of them."""
    labels = tuple(f"p{i}" for i in range(12) for _ in range(3 + i % 3))
    crops = data.Crops(
        np.zeros((len(labels), 8, 8, 3), np.uint8), labels, tuple(Path(str(i)) for i in labels)
    )
    split = data.split_people(sorted(set(labels)), 0.34, 3)
    train = crops.of(split.train)
    assert set(train.labels) == set(split.train)
    rows = train.per_person()
    people = sorted(rows)
    for step in range(50):
        r, y = data.pk_batch(rows, people, 4, 3, np.random.default_rng([3, step]))
        assert len(r) == 12 and list(np.bincount(y)) == [3] * 4
        drawn = {train.labels[i] for i in r}
        assert drawn <= set(split.train) and len(drawn) == 4
        # A person's K photos are distinct whenever they have K.
        for j in range(4):
            mine = r[y == j]
            if len(rows[train.labels[mine[0]]]) >= 3:
                assert len(set(mine)) == 3


def test_split_needs_two_people_in_each_role() -> None:
    with pytest.raises(FacegateError, match="each needs at least 2"):
        data.split_people(["a", "b", "c", "d", "e"], 0.2, 0)


def test_crops_of_caps_per_person() -> None:
    labels = ("a",) * 5 + ("b",) * 2
    c = data.Crops(np.arange(7).reshape(7, 1, 1, 1).astype(np.uint8), labels, (Path("x"),) * 7)
    sub = c.of(["a", "b"], max_per_person=3)
    assert sub.labels == ("a", "a", "a", "b", "b")
    assert list(sub.crops.reshape(-1)) == [0, 1, 2, 5, 6]


def test_augmentation_flips_shifts_and_relights_within_bounds() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    same = data.augment_crop(crop, np.random.default_rng(1), 0.0, 0.0)
    assert same.shape == crop.shape and same.dtype == np.uint8
    # With no shift and no brightness the result is the crop or its mirror image.
    assert (same == crop).all() or (same == crop[:, ::-1]).all()
    flips = {
        bool((data.augment_crop(crop, np.random.default_rng(s), 0.0, 0.0) == crop).all())
        for s in range(20)
    }
    assert flips == {True, False}
    flat = np.full((32, 32, 3), 100, np.uint8)
    for s in range(20):
        out = data.augment_crop(flat, np.random.default_rng(s), 0.1, 25.0)
        assert np.ptp(out) == 0 and 75 <= int(out[0, 0, 0]) <= 125  # only the brightness moves


# -- held-aside numbers ----------------------------------------------------------------------------


def test_held_out_numbers_on_a_known_layout() -> None:
    """Each person's photos share one direction; people are orthogonal: perfect scores."""
    labels = [f"p{i:02d}" for i in range(60) for _ in range(4)]
    e = np.zeros((240, 64), np.float32)
    for i in range(240):
        e[i, i // 4] = 1.0
    h = metrics.held_out(e, labels)
    assert h.genuine_pairs == 60 * 6 and h.impostor_pairs == 240 * 239 // 2 - 360
    assert h.tar_at_far == {"0.001": 1.0, "0.0001": 1.0}
    assert h.enrolled == 30 and h.mated_searches == 90 and h.stranger_searches == 120
    assert h.fnir_at_fpir == 0.0 and h.fpir == 0.0
    # 30 people x 4 photos: 6960 impostor pairs cannot resolve FAR 1e-4, and 60 stranger
    # searches cannot resolve an FPIR of 1%: None, not a number pretending to be one.
    small = metrics.held_out(e[:120], labels[:120])
    assert small.tar_at_far["0.0001"] is None and small.fnir_at_fpir is None


# -- the loop on a tiny network ------------------------------------------------------------------


def _tiny_start(seed: int = 0) -> model.StartModel:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3), name="input")
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_a")(inp)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv_b")(h)
    out = keras.layers.Dense(8, name="head")(keras.layers.Flatten(name="flat")(h))
    net = keras.Model(inp, out)

    def per_layer(name: str) -> str | None:
        return name if net.get_layer(name).weights else None

    return model.StartModel(
        "tiny", net, Preprocessing((16, 16), 127.5, 128.0), "arcface112", "none", "tiny", per_layer
    )


def _tiny_crops() -> tuple[data.Crops, data.Crops]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (10, 16, 16, 3))
    crops, labels = [], []
    for i in range(10):
        for _ in range(4):
            noise = rng.integers(-20, 21, (16, 16, 3))
            crops.append(np.clip(base[i] + noise, 0, 255).astype(np.uint8))
            labels.append(f"p{i}")
    c = data.Crops(np.stack(crops), tuple(labels), tuple(Path(f"{i}") for i in labels))
    return c.of([f"p{i}" for i in range(6)]), c.of([f"p{i}" for i in range(6, 10)])


def _trainer(tmp: Path, cfg: loop.LoopConfig) -> loop.Trainer:
    start = _tiny_start()
    model.set_trainable(start, 2)
    train, val = _tiny_crops()
    tmp.mkdir(parents=True, exist_ok=True)
    return loop.Trainer(start, train, val, cfg, tmp, "digest")


def test_trainable_blocks_freeze_the_rest() -> None:
    start = _tiny_start()
    assert model.set_trainable(start, 2) == ["conv_b", "head"]
    names = {v.path.split("/")[0] for v in start.model.trainable_variables}
    assert names == {"conv_b", "head"}
    with pytest.raises(FacegateError, match=r"--trainable-blocks must be in 1\.\.3"):
        model.set_trainable(start, 4)


def test_sface_and_facenet_blocks() -> None:
    assert model.sface_block("conv_13_dw_alpha") == "conv_13"
    assert model.sface_block("conv_1_prelu") == "conv_1" and model.sface_block("fc1") == "fc1"
    assert model.facenet_block("Block17_4_Branch_1_Conv2d_0b_1x7_BatchNorm") == "Block17_4"
    assert model.facenet_block("Bottleneck_BatchNorm") == "Bottleneck"
    assert model.facenet_block("Conv2d_4b_3x3") == "stem"
    assert model.facenet_block("input") is None


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = loop.LoopConfig(
        steps=6, people_per_batch=3, photos_per_person=3, lr=1e-2, warmup=2, eval_every=3
    )
    whole = _trainer(tmp_path / "whole", cfg)
    whole.run(progress=False)
    # The same run, stopped after step 4 and resumed by a fresh process (a new Trainer).
    part = _trainer(tmp_path / "part", cfg)
    part.run(progress=False, stop_after=4)
    assert part.state.step == 4 and not part.state.stopped
    again = _trainer(tmp_path / "part", cfg)
    assert again.restore() and again.state.step == 4
    again.run(progress=False)
    assert again.state.step == 6 and [h["loss"] for h in again.state.history] == pytest.approx(
        [h["loss"] for h in whole.state.history], rel=1e-5
    )
    for a, b in zip(whole.model.get_weights(), again.model.get_weights(), strict=True):
        assert np.allclose(a, b, atol=1e-6)
    # The training moved the trainable weights and left the frozen ones alone.
    fresh = _tiny_start()
    moved = [
        not np.allclose(a, b)
        for a, b in zip(fresh.model.get_weights(), whole.model.get_weights(), strict=True)
    ]
    assert moved == [False, False, True, True, True, True]  # conv_a frozen
    assert 0.0 <= whole.state.history[0]["active"] <= 1.0


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    cfg = loop.LoopConfig(steps=2, people_per_batch=3, photos_per_person=2, warmup=1)
    t = _trainer(tmp_path, cfg)
    t.save()
    other = loop.Trainer(t.start, t.train, t.val, cfg, tmp_path, "another digest")
    with pytest.raises(FacegateError, match="other settings"):
        other.restore()


# -- models that are not embedders -----------------------------------------------------------------


def _keras_file(tmp: Path, kind: str) -> Path:
    inp = keras.Input((160, 160, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    if kind == "softmax":
        out = keras.layers.Dense(5, activation="softmax")(h)
    elif kind == "map":
        out = keras.layers.Conv2D(4, 3)(inp)
    else:
        out = keras.layers.Dense(16)(h)
    path = tmp / f"{kind}.keras"
    keras.Model(inp, out).save(path)
    return path


@pytest.mark.parametrize(
    ("kind", "needle"),
    [("softmax", "class probabilities"), ("map", "not an embedding")],
)
def test_outputs_that_are_not_embeddings(tmp_path: Path, kind: str, needle: str) -> None:
    with pytest.raises(FacegateError, match=needle):
        model.load_start(
            str(_keras_file(tmp_path, kind)),
            tmp_path,
            Preprocessing((160, 160), 127.5, 128.0),
            "facenet160",
        )


def test_a_plain_keras_embedder_loads_with_per_layer_blocks(tmp_path: Path) -> None:
    s = model.load_start(
        str(_keras_file(tmp_path, "plain")),
        tmp_path,
        Preprocessing((160, 160), 127.5, 128.0),
        "facenet160",
    )
    assert model.check_embedding(s) == 16 and s.model.input_shape[0] is None
    assert len(model.blocks(s)) == 2


@pytest.mark.slow
def test_a_facenet_saved_model_starts_with_its_weights(tmp_path: Path) -> None:
    """A SavedModel of FaceNet: its 490 variables go by name into InceptionResNetV1."""
    from tools import facenet_keras

    keras.utils.set_random_seed(2)
    ref = facenet_keras.build_facenet(128)
    ref.export(str(tmp_path / "sm"), verbose=False)
    s = model.load_start(
        str(tmp_path / "sm"), tmp_path, Preprocessing((160, 160), 127.5, 128.0), "facenet160"
    )
    order = model.blocks(s)
    assert s.model.input_shape[0] is None and order[0] == "stem" and order[-1] == "Bottleneck"
    assert len(order) == 1 + 5 + 1 + 10 + 1 + 6 + 1
    x = np.random.default_rng(0).uniform(-1, 1, (1, 160, 160, 3)).astype(np.float32)
    assert np.allclose(s.model(x, training=False), ref(x, training=False), atol=1e-4)


def test_a_frozen_graph_cannot_be_fine_tuned(tmp_path: Path) -> None:
    pb = tmp_path / "graph.pb"
    pb.write_bytes(b"\x08\x01")
    with pytest.raises(FacegateError, match="frozen graph has no trainable weights"):
        model.load_start(str(pb), tmp_path, Preprocessing((160, 160)), "facenet160")


# -- bad input on the command line: one line, exit 2, nothing trained -----------------------


def _people(tmp: Path, counts: list[int]) -> Path:
    import cv2

    root = tmp / "people"
    for i, n in enumerate(counts):
        d = root / f"person_{i}"
        d.mkdir(parents=True)
        for j in range(n):
            cv2.imwrite(str(d / f"{j}.png"), np.full((64, 64, 3), 40 * j, np.uint8))
    return root


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    from tools.train import main

    rc = main([*args, "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [ln for ln in err.splitlines() if ln.startswith("train:")]


@pytest.mark.parametrize(
    ("counts", "extra", "needle"),
    [
        ([3], [], "needs at least 2 people"),
        ([], [], "no person folders with images"),
        ([3, 3, 1, 3, 3, 3], [], "fewer than 2 photos (person_2)"),
        ([3, 3, 3, 3, 3], ["--holdout", "0.2"], "each needs at least 2"),
    ],
)
def test_bad_folders(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    counts: list[int],
    extra: list[str],
    needle: str,
) -> None:
    folder = _people(tmp_path, counts)
    folder.mkdir(exist_ok=True)
    rc, lines = _cli([str(folder), "--out", str(tmp_path / "out"), *extra], capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("train: error:"), lines
    assert needle in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["garbage", "softmax", "missing"])
def test_bad_models(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    folder = _people(tmp_path, [2] * 6)
    if kind == "garbage":
        path = tmp_path / "model.keras"
        path.write_bytes(b"not a model" * 100)
        needle = "not a Keras .keras file"
    elif kind == "softmax":
        path = _keras_file(tmp_path, "softmax")
        needle = "class probabilities"
    else:
        path, needle = tmp_path / "nope.h5", "no such model file"
    args = [str(folder), "--model", str(path), "--holdout", "0.67", "--out", str(tmp_path / "o")]
    rc, lines = _cli(args, capsys)
    assert rc == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--alignment", "nope"], "--alignment must be one of"),
        (["--warmup", "10", "--steps", "5"], "--warmup must be in"),
        (["--lr", "2"], "--lr must be in (0, 1)"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], needle: str
) -> None:
    out = ["--out", str(tmp_path / "out")]
    rc, lines = _cli([str(_people(tmp_path, [2] * 6)), *flags, *out], capsys)
    assert rc == 2 and len(lines) == 1 and needle in lines[0], lines


def test_calibrate_needs_quantize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "out")]
    rc, lines = _cli([str(_people(tmp_path, [2] * 6)), "--calibrate", *out], capsys)
    assert rc == 2 and "--calibrate needs --quantize" in lines[0]
    assert not (tmp_path / "out").exists()
