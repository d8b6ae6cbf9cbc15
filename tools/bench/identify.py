"""Identification of the labelled probes and the strangers, with the same rule for both systems.

The largest face of each person's first photo is enrolled; the largest face
of every other labelled photo is a probe, and every stranger (an LFW person
not enrolled) must come out unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tools.bench.common import DEFAULT_MODELS, STRANGER, Models
from tools.bench.frames import BenchFrame
from tools.bench.stages import build_recognizer, enrol_gallery


@dataclass
class IdResult:
    """Identification of the probes: labelled photos not enrolled, and strangers.

    ``correct`` counts known people named right; ``strangers_rejected`` the
    strangers called unknown; their sum is ``total_correct``.
    """

    enrolled: int = 0
    probes: int = 0
    correct: int = 0
    wrong_person: int = 0
    unknown_or_missed: int = 0
    strangers: int = 0
    strangers_rejected: int = 0
    false_accepts: int = 0
    rule: str = ""  # the open-set rule it answered with (threshold for its gallery, margin)

    @property
    def total_correct(self) -> int:
        return self.correct + self.strangers_rejected


def score(truth: str, said: str | None, r: IdResult) -> None:
    """Count one probe: ``truth`` is a name or :data:`STRANGER`, ``said`` None for unknown."""
    if truth == STRANGER:
        r.strangers += 1
        if said is None:
            r.strangers_rejected += 1
        else:
            r.false_accepts += 1
        return
    r.probes += 1
    if said == truth:
        r.correct += 1
    elif said is None:
        r.unknown_or_missed += 1
    else:
        r.wrong_person += 1


def identify_ours(
    frames: Sequence[BenchFrame], runtime: str, threads: int, models: Models = DEFAULT_MODELS
) -> IdResult:
    """Enrol each person's first photo, identify the largest face of every other labelled one."""

    rec = build_recognizer(models, runtime, threads)
    gallery, used = enrol_gallery(rec, frames)
    rec.set_gallery(gallery)  # the threshold for this gallery's size, as on the device
    rule = f"{rec.operating_point.describe()}; margin {rec.margin:.3f}"
    r = IdResult(enrolled=len(gallery), rule=rule)
    for f in frames:
        if f.label is None or f.name in used:
            continue
        res = rec.identify(f.rgb)
        score(f.label, res[0].match.name if res else None, r)
    return r
