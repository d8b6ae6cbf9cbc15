"""APCER and BPCER (ISO/IEC 30107-3) of the liveness stage, with bounds, latency and curves.

* **APCER** of an attack type: the share of its attack clips the stage
  *passed* (``passed is True``): the door would have opened for them.
* **BPCER**: the share of bona fide samples (live people) the stage did not
  pass (``False`` or ``None``: a door in ``require`` mode denies both).
* Each with its one-sided 95% Clopper-Pearson upper bound
  (:func:`tools.stats.binomial_upper_bound`).
* **Latency**: for bona fide samples that passed, the time from the face's
  first frame to the verdict.
* **Curve**: APCER and BPCER as the pass mark on the score moves (the rule's
  mark is 0.5; a prop seen scores 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.liveness.decide import LivenessParams, Verdict, decide_progressive
from tools.liveness.samples import TARGET_TYPES, Evidence
from tools.stats import binomial_upper_bound

PASS_MARK = 0.5
MARKS = np.round(np.arange(0.0, 1.0001, 0.01), 2)


@dataclass(frozen=True)
class Rate:
    """``errors`` of ``n``, the rate and its 95% upper bound."""

    errors: int
    n: int

    @property
    def rate(self) -> float:
        return self.errors / self.n if self.n else 0.0

    @property
    def upper(self) -> float:
        return binomial_upper_bound(self.n, self.errors) if self.n else 1.0

    def text(self) -> str:
        if not self.n:
            return "n/a"
        return f"{100 * self.rate:.1f}% ({self.errors}/{self.n}, <= {100 * self.upper:.1f}%)"

    def to_json(self) -> dict[str, Any]:
        return {"errors": self.errors, "n": self.n, "rate": round(self.rate, 5),
                "upper95": round(self.upper, 5)}  # fmt: skip


def verdicts(samples: Sequence[Evidence], p: LivenessParams) -> list[Verdict]:
    """Each sample's verdict as the stage reaches it (the first final one within the window)."""
    return [decide_progressive(s.windows, s.blinks() if p.blinks else [], p, s.t0) for s in samples]


@dataclass(frozen=True)
class Result:
    """The measured rates of one parameter set."""

    apcer: dict[str, Rate]
    bpcer: Rate
    undecided_bona_fide: int
    spoof_bona_fide: int
    latency_s: tuple[float, ...]
    curve: list[dict[str, float]]
    scores: dict[str, list[float]]
    outcomes: dict[str, dict[str, int]]


def measure(samples: Sequence[Evidence], p: LivenessParams) -> Result:
    """APCER per attack type, BPCER, latency and the curve over the pass mark."""
    vs = verdicts(samples, p)
    kinds = sorted({s.kind for s in samples if s.attack})
    apcer = {}
    scores: dict[str, list[float]] = {}
    outcomes: dict[str, dict[str, int]] = {}
    for k in [*kinds, "bona fide"]:
        idx = [i for i, s in enumerate(samples) if s.kind == k]
        scores[k] = [vs[i].score for i in idx]
        outcomes[k] = {r: sum(1 for i in idx if vs[i].reason == r)
                       for r in ("live", "spoof", "no_liveness")}  # fmt: skip
        if k != "bona fide":
            apcer[k] = Rate(sum(1 for i in idx if vs[i].passed is True), len(idx))
    bona = [v for v, s in zip(vs, samples, strict=True) if not s.attack]
    bpcer = Rate(sum(1 for v in bona if v.passed is not True), len(bona))
    latency = tuple(sorted(v.decided_at for v in bona if v.passed and v.decided_at is not None))
    curve = []
    for mark in MARKS:
        row = {"mark": float(mark)}
        for k in kinds:
            sc = np.asarray(scores[k])
            row[k] = float((sc >= mark).mean()) if len(sc) else 0.0
        sb = np.asarray(scores["bona fide"])
        row["bpcer"] = float((sb < mark).mean()) if len(sb) else 0.0
        curve.append(row)
    return Result(
        apcer, bpcer, sum(1 for v in bona if v.passed is None),
        sum(1 for v in bona if v.passed is False), latency, curve, scores, outcomes,
    )  # fmt: skip


def markdown(res: Result, p: LivenessParams, meta: dict[str, Any]) -> str:
    """The report's Markdown."""
    lines = [
        "# Liveness: APCER and BPCER",
        "",
        f"Attacks: {meta.get('attacks', '')}. Bona fide: {meta.get('bona_fide', '')}.",
        f"Thresholds: min_turn_deg {p.min_turn_deg}, min_z {p.min_z}, "
        f"min_prop_points {p.min_prop_points}, blinks {p.blinks}, mounted {p.mounted}.",
        "",
        "| attack type | APCER (95% upper bound) | spoof | no evidence | passed |",
        "|---|---|---|---|---|",
    ]
    for k, r in res.apcer.items():
        o = res.outcomes[k]
        target = " (target)" if k in TARGET_TYPES else ""
        lines.append(
            f"| {k}{target} | {r.text()} | {o['spoof']} | {o['no_liveness']} | {o['live']} |"
        )
    o = res.outcomes["bona fide"]
    lines += [
        "",
        f"BPCER: {res.bpcer.text()} (spoof {o['spoof']}, no evidence {o['no_liveness']}, "
        f"passed {o['live']}).",
    ]
    if res.latency_s:
        lat = np.asarray(res.latency_s)
        lines.append(
            f"Face-to-decision latency of the bona fide samples that passed: median "
            f"{np.median(lat):.2f} s, max {lat.max():.2f} s."
        )
    return "\n".join(lines) + "\n"


def to_json(res: Result, p: LivenessParams, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "params": p.__dict__,
        "meta": meta,
        "apcer": {k: r.to_json() for k, r in res.apcer.items()},
        "bpcer": res.bpcer.to_json(),
        "bona_fide_outcomes": res.outcomes.get("bona fide", {}),
        "outcomes": res.outcomes,
        "latency_s": [round(x, 3) for x in res.latency_s],
        "curve": res.curve,
    }


def plot(res: Result, path: Path) -> Path:
    """Score histograms per sample type, and APCER/BPCER over the pass mark."""
    from tools.plots import _pyplot

    plt = _pyplot()
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    bins = np.linspace(0, 1, 41)
    for k, sc in res.scores.items():
        if sc:
            ax.hist(sc, bins=bins, histtype="step", linewidth=1.6, label=f"{k} ({len(sc)})",
                    density=True)  # fmt: skip
    ax.axvline(PASS_MARK, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("liveness score")
    ax.set_ylabel("density")
    ax.set_title("Score distributions (a prop seen scores 0)")
    ax.legend(fontsize=8)
    marks = [r["mark"] for r in res.curve]
    for k in res.apcer:
        cx.plot(marks, [100 * r[k] for r in res.curve], label=f"APCER {k}")
    cx.plot(marks, [100 * r["bpcer"] for r in res.curve], "k-", linewidth=2, label="BPCER")
    cx.axvline(PASS_MARK, color="k", linestyle="--", linewidth=1)
    cx.set_xlabel("pass mark on the score")
    cx.set_ylabel("%")
    cx.set_title("APCER and BPCER over the pass mark")
    cx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
