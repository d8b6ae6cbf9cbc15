"""The calibration and evaluation plots (matplotlib, an optional ``tools`` dependency).

Each function draws one PNG from numbers the statistics already computed;
nothing here decides anything. matplotlib is imported lazily with the
non-interactive Agg backend, so the tools run on a headless box, and
:func:`available` lets a tool skip the plots (with a warning) when it is
missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tools.stats import DetCurve, IdentificationPoint, LogisticFit


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    return plt


def distance_histogram(
    genuine: npt.NDArray[np.floating],
    impostor: npt.NDArray[np.floating],
    threshold: float,
    path: Path,
    confidence: LogisticFit | None = None,
    title: str = "Cosine distance: genuine vs impostor pairs",
) -> Path:
    """Histograms of the two distributions with the threshold and the confidence curve.

    Top: densities on a linear scale, with the calibrated confidence on the
    right axis. Bottom: pair counts on a log scale, where the tails that set
    the false-accept and false-reject rates near the threshold are visible.
    """
    plt = _pyplot()
    fig, (ax, lx) = plt.subplots(
        2, 1, figsize=(8, 7.5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    lo = float(min(np.min(genuine), np.min(impostor)))
    hi = float(max(np.max(genuine), np.max(impostor)))
    bins = np.linspace(max(0.0, lo - 0.02), min(2.0, hi + 0.02), 60)
    ax.hist(
        impostor,
        bins=bins,
        density=True,
        alpha=0.55,
        color="tab:red",
        label=f"impostor (different people), n={len(impostor)}",
    )
    ax.hist(
        genuine,
        bins=bins,
        density=True,
        alpha=0.55,
        color="tab:blue",
        label=f"genuine (same person), n={len(genuine)}",
    )
    ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold {threshold:.3f}")
    ax.set_ylabel("density")
    for data, colour in ((impostor, "tab:red"), (genuine, "tab:blue")):
        lx.hist(data, bins=bins, histtype="step", lw=1.5, color=colour, log=True)
    lx.axvline(threshold, color="black", ls="--", lw=1.5)
    lx.set_ylabel("pairs (log scale)")
    lx.set_xlabel("cosine distance  d = 1 - cos(a, b)   (accepted when d < threshold)")
    lx.grid(True, which="major", alpha=0.3)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if confidence is not None:
        line = _confidence_curve(ax, bins, confidence)
        handles.append(line)
        labels.append(line.get_label())
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _confidence_curve(ax: Any, bins: npt.NDArray[np.floating], confidence: LogisticFit) -> Any:
    """The calibrated confidence over the histogram's range, on a right-hand axis; its line."""
    ax2 = ax.twinx()
    xs = np.linspace(bins[0], bins[-1], 400)
    (line,) = ax2.plot(
        xs,
        confidence(xs),
        color="tab:green",
        lw=1.8,
        label=f"confidence p(genuine|d) (mid {confidence.midpoint:.3f}, "
        f"scale {confidence.scale:.3f})",
    )
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("calibrated confidence", color="tab:green")
    return line


def det_plot(
    curves: Sequence[tuple[str, DetCurve]],
    path: Path,
    operating: Sequence[tuple[str, float, float]] = (),
    target_far: float | None = None,
) -> Path:
    """DET curve: FNMR against FMR, both on log axes.

    A log axis cannot show a zero rate, so zeros are drawn at half the
    smallest non-zero rate of that axis (half of ``1/n``), marked by the
    dotted floor lines; the legend gives the true values.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 5.8), dpi=110)

    def floor_of(v: npt.NDArray[np.float64]) -> float:
        pos = v[v > 0]
        return 0.5 * float(pos.min()) if pos.size else 1e-4

    xf = min(floor_of(c.fmr) for _, c in curves)
    yf = min(floor_of(c.fnmr) for _, c in curves)
    for name, c in curves:
        ax.plot(np.maximum(c.fmr, xf), np.maximum(c.fnmr, yf), lw=1.8, label=name)
    for label, fmr, fnmr in operating:
        ax.plot(
            [max(fmr, xf)],
            [max(fnmr, yf)],
            "o",
            ms=8,
            markeredgecolor="black",
            label=f"{label}: FMR {fmr:.3g}, FNMR {fnmr:.3g}",
        )
    if target_far is not None:
        ax.axvline(target_far, color="grey", ls="--", lw=1, label=f"target FAR {target_far:.3g}")
    ax.axvline(xf, color="grey", ls=":", lw=0.8)
    ax.axhline(yf, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(xf / 1.5, 1.05)
    ax.set_ylim(yf / 1.5, 1.05)
    ax.set_xlabel("FMR: false match rate (impostor pairs accepted)")
    ax.set_ylabel("FNMR: false non-match rate (genuine pairs rejected)")
    ax.set_title("DET curve (lower left is better; dotted: zero-rate floor)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def identification_plot(
    sweeps: Sequence[tuple[str, Sequence[IdentificationPoint]]],
    path: Path,
    calibrated: Sequence[tuple[str, IdentificationPoint]] = (),
) -> Path:
    """Open-set identification: FNIR vs FPIR (left) and both against the threshold (right)."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    colours: dict[str, str] = {}
    for name, pts in sweeps:
        fpir = np.array([p.fpir for p in pts])
        fnir = np.array([p.fnir for p in pts])
        t = np.array([p.threshold for p in pts])
        (line,) = ax.plot(fpir, fnir, lw=1.8, label=name, drawstyle="steps-post")
        colours[name] = line.get_color()
        bx.plot(t, fnir, lw=1.8, color=line.get_color(), label=f"{name}: FNIR")
        bx.plot(t, fpir, lw=1.8, ls="--", color=line.get_color(), label=f"{name}: FPIR")
    for name, p in calibrated:
        ax.plot(
            [p.fpir],
            [p.fnir],
            "o",
            ms=9,
            color=colours.get(name),
            markeredgecolor="black",
            label=f"{name} calibrated t={p.threshold:.3f}: FPIR {p.fpir:.3f}, FNIR {p.fnir:.3f}",
        )
        bx.axvline(p.threshold, color="black", lw=1, ls=":")
    ax.set_xlabel("FPIR: strangers named as someone")
    ax.set_ylabel("FNIR: enrolled people not named correctly")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("FNIR vs FPIR (threshold sweep; lower left is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    bx.set_xlabel("threshold on cosine distance (dotted: calibrated)")
    bx.set_ylabel("rate")
    bx.set_ylim(-0.02, 1.02)
    bx.set_title("FNIR (solid) and FPIR (dashed) by threshold")
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
