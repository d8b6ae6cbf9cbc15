"""How often the look-alike warning fires on people who are not look-alikes, and on ones who are.

    python -m tools.lookalikes ../shared/lfw --pairs ../shared/lfw/pairs.txt \\
        --faces ../shared/faces --lookalike Angelina_Jolie,Kate_Siegel

``facegate enroll`` warns when two enrolled people's nearest photos lie
closer than the gallery's threshold (:func:`edge.identity.enrol.lookalikes`).
This tool measures that rule, and the one it replaced (the threshold plus the
margin), at the thresholds the device uses for galleries of ``N`` people
(``--people``) enrolled from ``E`` photos each (``--photos``; ``M = N E``
embeddings):

* **false alarms on different people**: every pair of people of the folder
  (each with their first ``E`` photos, ``E`` in ``--photos``), and the
  different-person pairs of an LFW ``pairs.txt``: the share that is warned
  about. Whether such a pair would really be confused is measured too
  (a *mix-up*: one of the next four photos of either, decided by the device's
  open-set rule against a gallery of the two, is named as the other); a
  warning on a pair that is never mixed up is a false alarm;
* **hits on a known look-alike pair** (``--lookalike A,B`` in ``--faces``):
  ``B``'s first photo against each photo of ``A`` alone, and against all of
  ``A``'s photos: the share warned about.

Every photo goes through the device's detector, alignment and embedder
(:mod:`tools._faces`, cached); thresholds come from the embedder manifest's
calibration tables (``--target-fpir``). Results on stdout and in
``--out/lookalikes.json``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.decide.recognizer import calibration_for
from edge.identity.thresholds import operating_point
from edge.vision.manifest import Calibration, write_json_atomic
from tools._common import run_tool
from tools._faces import (
    DEFAULT_CACHE,
    DEFAULT_DETECTOR,
    DEFAULT_MODEL,
    FaceEmbedder,
    FaceSet,
    list_people,
    read_lfw_pairs,
)

DEFAULT_OUT = Path("reports/lookalikes")
PROBES = 4  # photos after the enrolled ones that try to get mixed up


@dataclass(frozen=True)
class Row:
    """One gallery size and photos per person: how often each rule warns, how often pairs mix up."""

    people: int  # N: people in the gallery the threshold is for
    photos: int  # E: photos per person (M = N E)
    threshold: float
    margin: float
    pairs: int
    mixups: int  # pairs the door really confused
    warned: int  # the rule: nearest photos closer than the threshold
    warned_false: int  # ... of pairs never mixed up
    warned_mixups: int
    old_warned: int  # the old rule: closer than threshold + margin
    old_warned_false: int
    old_warned_mixups: int


def _by_person(fs: FaceSet) -> dict[str, npt.NDArray[np.intp]]:
    """Rows of each person's photos, in file-name order."""
    order = np.argsort([str(p) for p in fs.paths], kind="stable")
    out: dict[str, list[int]] = {}
    for i in order:
        out.setdefault(fs.labels[i], []).append(int(i))
    return {k: np.array(v, np.intp) for k, v in out.items()}


def _mixed_up(
    E: npt.NDArray[np.float32],
    a: npt.NDArray[np.intp],
    b: npt.NDArray[np.intp],
    probes: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]],
    t: float,
    m: float,
) -> bool:
    """Whether a probe of either person is named as the other by the open-set rule.

    Gallery: ``a`` and ``b`` (rows of ``E``); a probe of ``b`` is named ``a``
    when ``d_a < t`` and ``d_b - d_a >= m`` (each ``d`` the nearest photo).
    """
    for own, other, pr in ((b, a, probes[1]), (a, b, probes[0])):
        if len(pr) == 0:
            continue
        P = E[pr]
        d_own = np.min(1.0 - P @ E[own].T, axis=1)
        d_oth = np.min(1.0 - P @ E[other].T, axis=1)
        if np.any((d_oth < t) & (d_own - d_oth >= m)):
            return True
    return False


def folder_rows(
    fs: FaceSet, cal: Calibration, sizes: Sequence[int], photos: int, fpir: float
) -> list[Row]:
    """Every pair of people with ``photos`` + 1 photos or more, at each gallery size."""
    by = {k: v for k, v in _by_person(fs).items() if len(v) > photos}
    people = sorted(by)
    E = fs.embeddings
    enrol = {p: by[p][:photos] for p in people}
    probes = {p: by[p][photos : photos + PROBES] for p in people}
    first = [enrol[p] for p in people]
    nearest = np.array(
        [np.min(1.0 - E[x] @ E[y].T) for x, y in itertools.combinations(first, 2)], np.float64
    )
    pairs = list(itertools.combinations(range(len(people)), 2))
    rows = []
    for n in sizes:
        point = operating_point(cal.threshold, cal.far_table, cal.frr_table, n * photos, fpir)
        t, m = point.threshold, cal.margin
        mix = np.array(
            [
                _mixed_up(E, first[i], first[j], (probes[people[i]], probes[people[j]]), t, m)
                for i, j in pairs
            ]
        )
        new, old = nearest < t, nearest < t + m
        rows.append(
            Row(
                n,
                photos,
                t,
                m,
                len(pairs),
                int(mix.sum()),
                int(new.sum()),
                int((new & ~mix).sum()),
                int((new & mix).sum()),
                int(old.sum()),
                int((old & ~mix).sum()),
                int((old & mix).sum()),
            )
        )
    return rows


def pairs_file_rates(
    fs: FaceSet, pairs_file: Path, root: Path, cal: Calibration, sizes: Sequence[int], fpir: float
) -> list[dict[str, Any]]:
    """The different-person pairs of ``pairs.txt``: the share warned, new rule and old, per N
    (one photo each)."""
    index = fs.index_of()
    d = []
    for p, q, same in read_lfw_pairs(pairs_file, root):
        if not same and p in index and q in index:
            d.append(float(1.0 - fs.embeddings[index[p]] @ fs.embeddings[index[q]]))
    dist = np.array(d)
    out = []
    for n in sizes:
        t = operating_point(cal.threshold, cal.far_table, cal.frr_table, n, fpir).threshold
        out.append(
            {
                "people": n,
                "threshold": t,
                "pairs": len(dist),
                "warned": int(np.sum(dist < t)),
                "old_warned": int(np.sum(dist < t + cal.margin)),
            }
        )
    return out


def known_pair(
    fs: FaceSet, a: str, b: str, cal: Calibration, sizes: Sequence[int], fpir: float
) -> list[dict[str, Any]]:
    """``b``'s first photo against each photo of ``a`` alone (a gallery of ``N`` people from one
    photo each), and against all of ``a``'s photos (``N - 1`` more people from one photo), per N."""
    by = _by_person(fs)
    if a not in by or b not in by:
        return []
    E = fs.embeddings
    single = np.array([float(1.0 - E[i] @ E[by[b][0]]) for i in by[a]])
    together = float(np.min(single))
    out = []
    for n in sizes:
        t = operating_point(cal.threshold, cal.far_table, cal.frr_table, n, fpir).threshold
        t_all = operating_point(
            cal.threshold, cal.far_table, cal.frr_table, n - 1 + len(single), fpir
        ).threshold
        out.append(
            {
                "people": n,
                "threshold": t,
                "single_photos": len(single),
                "single_warned": int(np.sum(single < t)),
                "all_photos_threshold": t_all,
                "all_photos_warned": bool(together < t_all),
                "distances": sorted(round(float(x), 4) for x in single),
            }
        )
    return out


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:5.2f}% ({k}/{n})" if n else "n/a"


def print_report(rows: list[Row], pf: list[dict[str, Any]], known: list[dict[str, Any]]) -> None:
    """The three tables on stdout."""
    print("different people (every pair, first E photos each): warned by the rule / the old one")
    print(
        "   N  E  threshold  mix-ups  warned (rule)       false alarms        warned mix-ups  "
        "old rule            old: false alarms   old: mix-ups"
    )
    for r in rows:
        print(
            f"{r.people:4d} {r.photos:2d}  {r.threshold:.4f}   {r.mixups:5d}  "
            f"{_pct(r.warned, r.pairs):<19} {_pct(r.warned_false, r.pairs):<19} "
            f"{r.warned_mixups:5d}           {_pct(r.old_warned, r.pairs):<19} "
            f"{_pct(r.old_warned_false, r.pairs):<19} {r.old_warned_mixups:5d}"
        )
    for p in pf:
        print(
            f"pairs.txt different-person pairs, N={p['people']} (one photo each): rule "
            f"{_pct(p['warned'], p['pairs'])}, old rule {_pct(p['old_warned'], p['pairs'])}"
        )
    for k in known:
        print(
            f"known look-alike pair, N={k['people']} from one photo (t={k['threshold']:.4f}): "
            f"{_pct(k['single_warned'], k['single_photos'])} of single photos warned; with all "
            f"{k['single_photos']} photos (t={k['all_photos_threshold']:.4f}): "
            f"{'warned' if k['all_photos_warned'] else 'not warned'}"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.lookalikes", description=__doc__)
    p.add_argument("folder", type=Path, help="labelled photos: <folder>/<Person>/<image>")
    p.add_argument("--pairs", type=Path, help="an LFW pairs.txt: its different-person pairs too")
    p.add_argument("--faces", type=Path, help="a folder holding the known look-alike pair")
    p.add_argument("--lookalike", help="A,B: the known look-alike pair in --faces")
    p.add_argument("--people", default="2,4,10,60", help="gallery sizes N (people enrolled)")
    p.add_argument("--photos", default="1,2", help="photos per person E")
    p.add_argument("--target-fpir", type=float, default=0.01)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-cache", action="store_true")
    return p


def _main(argv: Sequence[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    sizes = [int(x) for x in a.people.split(",") if x.strip()]
    cache = None if a.no_cache else DEFAULT_CACHE
    fe = FaceEmbedder(a.model, a.detector, 40, "auto", 2)
    cal = calibration_for(fe.embedder)
    fs = fe.embed_items(list_people(a.folder), cache)
    rows = [
        r
        for e in (int(x) for x in a.photos.split(","))
        for r in folder_rows(fs, cal, sizes, e, a.target_fpir)
    ]
    pf = (
        []
        if a.pairs is None
        else pairs_file_rates(fs, a.pairs, a.folder, cal, sizes, a.target_fpir)
    )
    known: list[dict[str, Any]] = []
    if a.faces is not None and a.lookalike:
        x, y = a.lookalike.split(",", 1)
        known = known_pair(
            fe.embed_items(list_people(a.faces), cache), x, y, cal, sizes, a.target_fpir
        )
    print_report(rows, pf, known)
    data = {
        "calibration": cal.source,
        "target_fpir": a.target_fpir,
        "rows": [asdict(r) for r in rows],
        "pairs_file": pf,
        "known_pair": known,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out / "lookalikes.json", data)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("lookalikes", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
