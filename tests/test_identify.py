"""The central promise, end to end: enrolled people are named, strangers are unknown.

Also every bad input of ``facegate enroll`` / ``identify``: one clear line, no
traceback, the gallery never corrupted.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from conftest import DETECTOR_FULL

from edge.cli import main
from edge.imageio import list_images


def _people(shared: Path) -> dict[str, list[Path]]:
    root = shared / "faces"
    return {d.name: list_images(d) for d in sorted(root.iterdir()) if d.is_dir()}


def _identify(capsys: pytest.CaptureFixture[str], args: list[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    main(["identify", *args])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _largest(faces: list[dict[str, object]]) -> dict[str, object]:
    def area(f: dict[str, object]) -> int:
        box = f["box"]
        assert isinstance(box, list)
        return int(box[2]) * int(box[3])

    return max(faces, key=area)


ENROLLED_FROM: dict[str, Path] = {}

# The two people enrolled through the CLI: after Angelina Jolie, the people with
# the most photos. Angelina is left out on purpose: the one photo of Kate Siegel
# lies at cosine distance 0.358 from her, inside FaceNet's genuine range (same
# person pairs reach 0.44 here), so with Angelina enrolled Kate is named as her.
# That look-alike is the model's only false match in these photos;
# test_no_stranger_named_for_any_pair_of_people measures it over every pair.
ENROLL = ("Barack_Obama", "Jennifer_Aniston")
LOOKALIKE = ("Kate_Siegel", "Angelina_Jolie")


@pytest.fixture(scope="module")
def enrolled(
    tmp_path_factory: pytest.TempPathFactory, shared: Path, models: Path
) -> tuple[Path, list[str]]:
    """A gallery with two people, one photo each.

    Each is enrolled from their first photo (sorted) that holds exactly one
    face; a photo with a second face is skipped by ``enroll``, as it must be.
    """
    people = _people(shared)
    two = list(ENROLL)
    gallery = tmp_path_factory.mktemp("gallery") / "g.fgg"
    for name in two:
        for photo in people[name]:
            if main(["enroll", "--gallery", str(gallery), "--name", name, str(photo)]) == 0:
                ENROLLED_FROM[name] = photo
                break
        assert name in ENROLLED_FROM, f"no photo of {name} could be enrolled"
    return gallery, two


def test_enrolled_named_and_strangers_unknown(
    enrolled: tuple[Path, list[str]], shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gallery, two = enrolled
    people = _people(shared)
    probes = [p for ps in people.values() for p in ps if p not in ENROLLED_FROM.values()]
    lines = _identify(capsys, ["--gallery", str(gallery), *map(str, probes)])
    assert len(lines) == len(probes)
    wrong = []
    for line in lines:
        image = Path(str(line["image"]))
        person = image.parent.name
        faces = line["faces"]
        assert isinstance(faces, list) and faces, f"no face found in {image}"
        face = _largest(faces)
        assert set(face) == {"box", "name", "distance", "second_best_distance", "confidence"}
        expected = person if person in two else None
        if face["name"] != expected:
            wrong.append(f"{person}/{image.name}: {face['name']} at {face['distance']}")
        # Anyone else in the photo is never named as an enrolled person either.
        for other in faces:
            if other is not face:
                assert other["name"] is None or other["name"] == expected
    assert not wrong, "misidentified: " + "; ".join(wrong)


def test_no_stranger_named_for_any_pair_of_people(shared: Path, models: Path) -> None:
    """Every pair of people enrolled (first usable photo each): strangers stay unknown.

    55 galleries of two, every other photo of all 15 people probed with the
    calibrated threshold and margin from the manifest. The one exception is the
    look-alike pair documented above (and in docs/calibration.md).
    """
    import itertools

    from conftest import DETECTOR, EMBEDDER

    from edge.decide.recognizer import Recognizer
    from edge.errors import NoFaceError
    from edge.identity.gallery import Gallery
    from edge.identity.matcher import Matcher
    from edge.imageio import read_image
    from edge.numerics import Confidence

    rec = Recognizer.from_models(DETECTOR, EMBEDDER)
    cal = rec.calibration
    people = _people(shared)
    enrol: dict[str, tuple[Path, object]] = {}
    probes: list[tuple[str, Path, object]] = []
    for name, photos in people.items():
        for p in photos:
            img = read_image(p)
            if name not in enrol:
                try:
                    enrol[name] = (p, rec.embed_single_face(img))
                    continue
                except NoFaceError:
                    pass
            faces = rec.identify(img)
            assert faces, f"no face in {p}"
            biggest = max(faces, key=lambda f: f.detection.box.w * f.detection.box.h)
            probes.append((name, p, biggest.embedding))
    false_matches = set()
    for a, b in itertools.combinations([n for n in people if len(people[n]) >= 2], 2):
        g = Gallery(rec.model_sha256)
        for n in (a, b):
            g.add(n, enrol[n][1][None, :])  # type: ignore[index]
        m = Matcher(g, cal.threshold, cal.margin, Confidence(cal.conf_midpoint, cal.conf_scale))
        for name, _p, emb in probes:
            got = m.match(emb).name  # type: ignore[arg-type]
            if name not in (a, b) and got is not None:
                false_matches.add((name, got))
    assert false_matches <= {LOOKALIKE}, f"strangers named: {sorted(false_matches)}"


def test_group_photos(
    enrolled: tuple[Path, list[str]], shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several faces per image: only enrolled people are ever named, and they are found."""
    gallery, two = enrolled
    groups = list_images(shared / "group")
    lines = _identify(
        capsys, ["--gallery", str(gallery), "--detector", str(DETECTOR_FULL), *map(str, groups)]
    )
    by_image = {Path(str(line["image"])).name: line["faces"] for line in lines}
    assert sum(len(f) for f in by_image.values()) >= 15  # type: ignore[arg-type]
    named = {
        img: sorted(str(f["name"]) for f in faces if f["name"])  # type: ignore[union-attr]
        for img, faces in by_image.items()
    }
    # two_people.jpg and obama_and_biden.jpg show Barack Obama with Joe Biden (not enrolled).
    if "Barack_Obama" in two:
        assert named["two_people.jpg"] == ["Barack_Obama"]
        assert named["obama_and_biden.jpg"] == ["Barack_Obama"]
    # Nobody in these photos is named twice in one image, and only enrolled names appear.
    for img, names in named.items():
        assert len(names) == len(set(names)), img
        assert set(names) <= set(two), img
    # multiface.jpg is the cast of Friends: Jennifer Aniston (far left) and five
    # people who are not enrolled. kit_with_rose.jpg holds nobody enrolled.
    if "Jennifer_Aniston" in two:
        assert named["multiface.jpg"] == ["Jennifer_Aniston"]
        jen = next(f for f in by_image["multiface.jpg"] if f["name"])  # type: ignore[union-attr]
        assert jen["box"][0] < 400  # type: ignore[index]
    assert named["kit_with_rose.jpg"] == []


# -- bad input --------------------------------------------------------------------
def _huge_png(path: Path) -> None:
    """A small valid PNG header that claims 30000 x 30000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_bad_images_are_skipped_with_a_reason(
    enrolled: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gallery, _ = enrolled
    before = gallery.read_bytes()
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    _huge_png(huge)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    missing = tmp_path / "missing.jpg"
    capsys.readouterr()
    rc = main(
        ["identify", "--gallery", str(gallery), *map(str, [text, empty, huge, truncated, missing])]
    )
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("skipped ") for line in lines)
    assert "too large" in lines[2] and "cannot read" in lines[4]
    assert "Traceback" not in err
    # Enrolling from bad files or a faceless picture fails cleanly and leaves the gallery as it was.
    noface = tmp_path / "grey.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(noface), np.full((200, 200, 3), 127, np.uint8))
    rc = main(["enroll", "--gallery", str(gallery), "--name", "x", str(text), str(noface)])
    err = capsys.readouterr().err
    assert rc == 2 and "no face found" in err and "not enrolled" in err
    assert gallery.read_bytes() == before


def test_corrupt_gallery_and_missing_model(
    enrolled: tuple[Path, list[str]],
    tmp_path: Path,
    shared: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gallery, two = enrolled
    bad = tmp_path / "bad.fgg"
    bad.write_bytes(gallery.read_bytes()[:-10])
    photo = str(ENROLLED_FROM[two[0]])
    capsys.readouterr()
    assert main(["identify", "--gallery", str(bad), photo]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "corrupt" in err
    size = bad.stat().st_size
    assert main(["enroll", "--gallery", str(bad), "--name", "eve", photo]) == 2
    assert bad.stat().st_size == size  # the corrupt gallery is refused, not overwritten
    capsys.readouterr()
    assert (
        main(
            [
                "identify",
                "--gallery",
                str(gallery),
                "--embedder",
                str(tmp_path / "no.tflite"),
                photo,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no manifest" in err


def test_gallery_list_and_remove(
    enrolled: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gallery, two = enrolled
    copy = tmp_path / "copy.fgg"
    copy.write_bytes(gallery.read_bytes())
    capsys.readouterr()
    assert main(["gallery", "list", "--gallery", str(copy)]) == 0
    listed = [json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(two)
    assert main(["gallery", "remove", two[0], "--gallery", str(copy)]) == 0
    assert main(["gallery", "remove", "Nobody", "--gallery", str(copy)]) == 2
    capsys.readouterr()
    main(["gallery", "list", "--gallery", str(copy)])
    assert [json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()] == [two[1]]
