"""A short real fine-tune: a few ../shared/lfw people, a few steps, all the way to the door.

``python -m tools.train`` runs on twelve LFW people (linked, not copied, into
a temporary folder): the faces go through the device's detector, SFace (the
default embedder) trains four steps, is exported, quantised and calibrated
on the held-aside people; the int8 model then loads on the device path and
``facegate enroll``/``identify`` work with it. About a minute on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

PEOPLE = 12
PHOTOS = 6


@pytest.fixture(scope="module")
def people(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lfw = shared / "lfw"
    if not lfw.is_dir():
        pytest.skip(f"{lfw} is absent: the real fine-tune needs LFW's photos")
    root = tmp_path_factory.mktemp("lfw_people")
    for person in sorted(p for p in lfw.iterdir() if p.is_dir())[:PEOPLE]:
        d = root / person.name
        d.mkdir()
        for photo in sorted(person.iterdir())[:PHOTOS]:
            (d / photo.name).symlink_to(photo)
    return root


@pytest.fixture(scope="module")
def trained(people: Path, models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.train import main

    out = tmp_path_factory.mktemp("trained")
    args = [str(people), "--out", str(out), "--steps", "4", "--eval-every", "2"]
    args += ["--warmup", "1", "--batch-people", "4", "--batch-photos", "3"]
    args += ["--holdout", "0.34", "--quantize", "--calibrate", "--no-progress"]
    assert main(args) == 0
    return out


def test_report_and_outputs(trained: Path) -> None:
    rep = json.loads((trained / "training_report.json").read_text())
    for name in (
        "training_report.md",
        "training_curves.png",
        "distances.png",
        "sface_ft.keras",
        "sface_ft_saved_model/saved_model.pb",
        "sface_ft_float32.tflite",
        "sface_ft_int8.tflite",
        "sface_ft_int8.json",
        "sface_ft_int8.report.md",
        "calibration/calibration.md",
    ):
        assert (trained / name).exists(), name
    split = rep["split"]
    train, held = set(split["train"]), set(split["val"]) | set(split["test"])
    assert train and held and not train & held
    assert rep["data"]["people"] == PEOPLE and len(held) == 4
    tr = rep["training"]
    assert tr["steps_done"] == 4 and len(tr["history"]) == 4
    assert [e["step"] for e in tr["evals"]] == [0, 2, 4]
    for h in tr["history"]:
        assert h["loss"] >= 0.0 and 0.0 <= h["active"] <= 1.0 and h["lr"] > 0.0
    assert rep["loop"]["seed"] == 0 and rep["loop"]["mining"] == "semi-hard"
    assert rep["model"]["trainable_blocks"] == ["conv_13", "conv_14", "fc1"]
    for key in ("float_before", "float_after", "int8_before", "int8_after"):
        assert rep["test"][key]["people"] == 2, key
    assert rep["timing"]["total_cpu_s"] > 0


def test_int8_model_runs_on_the_device_path(trained: Path) -> None:
    import numpy as np

    from edge.vision.embedder import Embedder
    from edge.vision.manifest import load_manifest
    from tools import edgetpu_ops, quantize

    int8 = trained / "sface_ft_int8.tflite"
    m = load_manifest(int8)
    assert m.quantization == "int8" and m.alignment == "arcface112"
    assert m.calibration is not None and "tools.train" in m.calibration.source
    assert m.extra["trained_by"].startswith("facegate-train/")
    emb = Embedder.load(int8).embed(np.zeros((2, 112, 112, 3), np.uint8))
    assert emb.shape == (2, 128) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ops = quantize.model_ops(int8)
    assert quantize.non_int8_ops(ops) == []
    assert edgetpu_ops.unsupported_ops(op.name for op in ops) == []


def test_enroll_and_identify_with_the_trained_model(
    trained: Path, people: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.cli import main

    int8 = str(trained / "sface_ft_int8.tflite")
    gallery = tmp_path / "g.fgg"
    enrolled = {}
    for person in sorted(p for p in people.iterdir())[:2]:
        for photo in sorted(person.iterdir()):
            args = ["enroll", "--embedder", int8, "--gallery", str(gallery)]
            if main([*args, "--name", person.name, str(photo)]) == 0:
                enrolled[person.name] = photo
                break
        assert person.name in enrolled, f"no photo of {person.name} could be enrolled"
    capsys.readouterr()
    photos = [str(p) for p in enrolled.values()]
    assert main(["identify", "--embedder", int8, "--gallery", str(gallery), *photos]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(lines) == 2
    for line, name in zip(lines, enrolled, strict=True):
        face = max(line["faces"], key=lambda f: f["box"][2] * f["box"][3])
        assert face["name"] == name and face["distance"] < 0.05
