"""Presentation attacks as the physics makes them: a photo on paper or a screen, held up.

A mounted camera (pinhole, focal length ``f`` pixels, principal point at the
frame's centre) looks at a static scene. The attacker holds a *prop* in
front of it: a print (paper with a white border, the printer's reduced
gamut, a halftone screen, optionally bent into a cylinder) or a phone or
tablet screen (black bezel, the display's pixel grid, which the camera
samples into moire, a black level, and glare: the mirror image of a light
source that slides across the glass at twice the angle the screen turns).

The prop is a plane (or, bent, a set of planar strips) in 3-D. A pose
``(R, t)`` maps a point ``(u, v)`` of the prop, in millimetres from the face's
centre, to the camera point ``u r1 + v r2 + t``, so its image is the
homography ``H = K [r1 r2 t]``: each frame is the prop's texture warped by
``H`` onto the background, rendered ``SUPERSAMPLE`` times finer and averaged
down (pixel integration, which is where moire comes from). Hand motion is a
smooth random walk (a few random sinusoids of 0.15-1.2 Hz) plus
physiological tremor (8-12 Hz); *held still* is tremor and a slow drift only,
*still* a prop on a stand. The camera adds motion blur (sub-frame renders
over the exposure), auto-exposure drift, lens blur, signal-dependent sensor
noise and JPEG compression.

Everything random comes from one ``numpy`` generator seeded by the spec, so
a spec always renders the same frames.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.types import Image

F64 = npt.NDArray[np.float64]

SUPERSAMPLE = 2
ATTACK_KINDS = ("print", "screen")
MOTIONS = ("moved", "tremor", "still")


@dataclass(frozen=True)
class AttackSpec:
    """What to render: the prop, the hand's motion, the clip and the camera.

    ``attack`` names the ISO/IEC 30107-3 attack type this clip counts for.
    """

    prop: str = "print"  # print | screen
    motion: str = "moved"  # moved | tremor (held still by hand) | still (on a stand)
    bent: bool = False  # print only: bent into a cylinder
    seed: int = 0
    fps: float = 25.0
    seconds: float = 3.0
    size: tuple[int, int] = (640, 480)  # width, height
    hfov_deg: float = 70.0  # the camera's horizontal field of view

    @property
    def attack(self) -> str:
        base = "bent print" if self.bent else self.prop
        return f"{base} {'moved' if self.motion == 'moved' else 'still'}"

    @property
    def focal(self) -> float:
        return self.size[0] / 2 / math.tan(math.radians(self.hfov_deg) / 2)


@dataclass(frozen=True)
class Pose:
    """Rotation angles (radians: pitch about x, yaw about y, roll about z) and translation (mm)."""

    pitch: float
    yaw: float
    roll: float
    t: tuple[float, float, float]


def rotation(pitch: float, yaw: float, roll: float) -> F64:
    """``R = Rz(roll) Ry(yaw) Rx(pitch)``: the prop's axes in camera coordinates."""
    cx, sx = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    cz, sz = math.cos(roll), math.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def intrinsics(focal: float, size: tuple[int, int]) -> F64:
    """The pinhole camera matrix ``K`` with the principal point at the frame's centre."""
    w, h = size
    return np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1.0]])


def plane_homography(k: F64, r: F64, t: Sequence[float] | F64) -> F64:
    """``H = K [r1 r2 t]``: prop millimetres ``(u, v, 1)`` -> image pixels (homogeneous)."""
    m = np.column_stack([r[:, 0], r[:, 1], np.asarray(t, dtype=np.float64)])
    return np.asarray(k @ m, dtype=np.float64)


# -- motion --------------------------------------------------------------------------


@dataclass(frozen=True)
class Wave:
    """A sum of sinusoids: ``sum a_i sin(2 pi f_i t + p_i)``."""

    amps: tuple[float, ...]
    freqs: tuple[float, ...]
    phases: tuple[float, ...]

    def __call__(self, t: float) -> float:
        return float(
            sum(a * math.sin(2 * math.pi * f * t + p)
                for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True))
        )  # fmt: skip


def _wave(rng: np.random.Generator, amp: float, f_lo: float, f_hi: float, n: int = 3) -> Wave:
    """A random smooth wave whose components sum to about ``amp`` in amplitude."""
    a = rng.uniform(0.3, 1.0, n)
    a = a / a.sum() * amp
    return Wave(
        tuple(float(x) for x in a),
        tuple(float(x) for x in rng.uniform(f_lo, f_hi, n)),
        tuple(float(x) for x in rng.uniform(0, 2 * math.pi, n)),
    )


@dataclass(frozen=True)
class Motion:
    """The prop's pose over time: a base pose plus a wave per degree of freedom (6 of them)."""

    base: Pose
    waves: tuple[Wave, ...]  # pitch, yaw, roll (radians), x, y, z (mm)

    def pose(self, t: float) -> Pose:
        d = [w(t) for w in self.waves]
        b = self.base
        return Pose(
            b.pitch + d[0],
            b.yaw + d[1],
            b.roll + d[2],
            (b.t[0] + d[3], b.t[1] + d[4], b.t[2] + d[5]),
        )


def hand_motion(rng: np.random.Generator, motion: str, base: Pose) -> Motion:
    """Waves for the three kinds of hand.

    ``moved``: an attacker turning and shifting the prop to fake a live head:
    up to 6-20 degrees of pitch and yaw, 2-8 degrees of roll and 10-40 mm of
    shift at 0.15-1.2 Hz, plus tremor. ``tremor``: held as still as a hand
    can: physiological tremor (8-12 Hz, 0.05-0.4 mm and 0.02-0.2 degrees)
    and a slow drift of at most 1.5 mm and 0.4 degrees. ``still``: on a stand.
    """
    deg = math.radians
    waves: list[Wave] = []
    if motion == "still":
        zero = Wave((0.0,), (0.0,), (0.0,))
        return Motion(base, (zero,) * 6)
    for i in range(6):
        rot = i < 3
        if motion == "moved":
            amp = deg(rng.uniform(6, 20) if i < 2 else rng.uniform(2, 8)) if rot else (
                rng.uniform(10, 40))  # fmt: skip
            slow = _wave(rng, amp, 0.15, 1.2)
        else:
            amp = deg(rng.uniform(0.05, 0.4)) if rot else rng.uniform(0.2, 1.5)
            slow = _wave(rng, amp, 0.05, 0.4, 2)
        tremor_amp = deg(rng.uniform(0.02, 0.2)) if rot else rng.uniform(0.05, 0.4)
        tremor = _wave(rng, tremor_amp, 8.0, 12.0, 2)
        waves.append(Wave(slow.amps + tremor.amps, slow.freqs + tremor.freqs,
                          slow.phases + tremor.phases))  # fmt: skip
    return Motion(base, tuple(waves))


# -- props ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prop:
    """The prop's texture (RGB float, linear 0-255), its scale and where the face is on it.

    ``mm_per_px``: the texture's pixel size on the prop; ``face_mm``: the
    face's width on the prop; ``origin``: the texture pixel of the face's
    centre (the prop's coordinate origin). ``screen``: pixel pitch (mm) of a
    display, 0 for paper.
    """

    texture: npt.NDArray[np.float32]
    mm_per_px: float
    face_mm: float
    origin: tuple[float, float]
    glossy: float  # peak glare, 0-255
    screen_pitch_mm: float = 0.0
    bend_radius_mm: float = 0.0
    extra: dict[str, float | str] = field(default_factory=dict)


def _fit(img: npt.NDArray[np.float32], w: int, h: int) -> npt.NDArray[np.float32]:
    import cv2

    out = cv2.resize(img, (max(1, w), max(1, h)), interpolation=cv2.INTER_AREA
                     if w < img.shape[1] else cv2.INTER_CUBIC)  # fmt: skip
    return np.asarray(out, dtype=np.float32)


def _crop_photo(
    photo: Image, face: tuple[float, float, float, float], context: float, aspect: float
) -> tuple[npt.NDArray[np.float32], tuple[float, float], float]:
    """The photo cropped around the face: ``context`` face widths wide, at ``aspect`` (h/w).

    Returns the crop, the face centre in it, and the face's width in crop
    pixels. The crop is clipped to the photo (a photo with little around the
    face gives a tighter print).
    """
    x, y, w, h = face
    cx, cy = x + w / 2, y + h / 2
    cw = context * w
    ch = cw * aspect
    x0, x1 = max(0.0, cx - cw / 2), min(float(photo.shape[1]), cx + cw / 2)
    # A portrait shows more below the face (neck, shoulders) than above it.
    y0, y1 = max(0.0, cy - 0.42 * ch), min(float(photo.shape[0]), cy + 0.58 * ch)
    crop = photo[int(y0) : math.ceil(y1), int(x0) : math.ceil(x1)].astype(np.float32)
    return crop, (cx - int(x0), cy - int(y0)), w


def print_prop(rng: np.random.Generator, photo: Image, face: tuple[float, float, float, float],
               bent: bool) -> Prop:  # fmt: skip
    """A photo printed on paper.

    The face is printed 60-110% of life size (a 140 mm wide face) or as a
    small photo (40-70 mm); the print shows 1.3-3.5 face widths of the photo
    around the face, with a white paper border of 0-15 mm. A printer's
    gamut: paper white ~235-250, ink black ~25-45, a slight colour cast;
    a halftone screen of 60-110 lines per inch (laser, newspaper); glossy
    paper reflects a little.
    """
    import cv2

    life = rng.uniform() < 0.7
    face_mm = 140.0 * rng.uniform(0.6, 1.1) if life else rng.uniform(40, 70)
    context = rng.uniform(1.3, 3.5)
    aspect = rng.uniform(1.15, 1.45)
    crop, (fx, fy), fw = _crop_photo(photo, face, context, aspect)
    # Texture resolution: 4 px/mm renders a 140 mm face at 560 px (finer than
    # any camera here), enough for a halftone of up to 2 lines/mm.
    px_per_mm = 4.0 if face_mm > 90 else 8.0
    scale = face_mm * px_per_mm / fw
    img = _fit(crop, round(crop.shape[1] * scale), round(crop.shape[0] * scale))
    fx, fy = fx * img.shape[1] / crop.shape[1], fy * img.shape[0] / crop.shape[0]
    # The printer's gamut: ink black and paper white, a colour cast.
    black, white = rng.uniform(25, 45), rng.uniform(235, 250)
    cast = 1.0 + rng.uniform(-0.04, 0.04, 3)
    img = (black + img / 255.0 * (white - black)) * cast.astype(np.float32)
    lpi = rng.uniform(60, 110)
    if rng.uniform() < 0.7:  # a halftone screen (inkjets dither finer; laser, press: visible)
        period = 25.4 / lpi * px_per_mm
        ang = math.radians(rng.uniform(0, 90))
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float32)
        u = (xx * math.cos(ang) + yy * math.sin(ang)) * (2 * math.pi / period)
        v = (-xx * math.sin(ang) + yy * math.cos(ang)) * (2 * math.pi / period)
        dots = (np.cos(u) * np.cos(v))[..., None]
        depth = rng.uniform(0.05, 0.15)
        img = img * (1.0 + depth * dots)
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.8)), np.float32)  # ink
    margin = rng.uniform(0, 15) * px_per_mm
    m = round(margin)
    paper = np.full((img.shape[0] + 2 * m, img.shape[1] + 2 * m, 3), white, np.float32)
    paper *= cast.astype(np.float32)
    paper[m : m + img.shape[0], m : m + img.shape[1]] = img
    radius = rng.uniform(120, 400) if bent else 0.0
    return Prop(
        np.clip(paper, 0, 255).astype(np.float32), 1.0 / px_per_mm, face_mm, (fx + m, fy + m),
        glossy=rng.uniform(0, 60), bend_radius_mm=radius,
        extra={"context": round(context, 2), "margin_mm": round(margin / px_per_mm, 1),
               "lpi": round(lpi), "life_size": str(life)},
    )  # fmt: skip


def screen_prop(rng: np.random.Generator, photo: Image,
                face: tuple[float, float, float, float]) -> Prop:  # fmt: skip
    """A photo shown on a phone (65-75 mm wide, 400-460 ppi) or a tablet (150-200 mm, 264 ppi).

    The photo fills the screen (cropped to its aspect ratio) around the face;
    a 3-8 mm black bezel; the display's black level (LCD ~8-20) and peak
    white ~230-255 with a cool cast; glass glare.
    """
    phone = rng.uniform() < 0.6
    width = rng.uniform(65, 75) if phone else rng.uniform(150, 200)
    aspect = rng.uniform(2.0, 2.2) if phone else rng.uniform(1.33, 1.5)
    ppi = rng.uniform(400, 460) if phone else 264.0
    # How much of the photo around the face fills the screen width.
    context = rng.uniform(1.2, 2.5)
    crop, (fx, fy), fw = _crop_photo(photo, face, context, aspect)
    px_per_mm = 6.0 if phone else 4.0
    face_mm = width * fw / crop.shape[1]
    sw, sh = round(width * px_per_mm), round(width * aspect * px_per_mm)
    # Fill the screen: scale the crop to cover it, centred on the face.
    s = max(sw / crop.shape[1], sh / crop.shape[0])
    img = _fit(crop, round(crop.shape[1] * s), round(crop.shape[0] * s))
    ox = int(np.clip(fx * s - sw / 2, 0, img.shape[1] - sw))
    oy = int(np.clip(fy * s - sh * 0.45, 0, img.shape[0] - sh))
    img = img[oy : oy + sh, ox : ox + sw]
    fx, fy = fx * s - ox, fy * s - oy
    face_mm = fw * s / px_per_mm
    black, white = rng.uniform(8, 20), rng.uniform(230, 255)
    cast = np.array([0.97, 1.0, 1.04], np.float32) * (1 + rng.uniform(-0.02, 0.02, 3))
    img = (black + img / 255.0 * (white - black)) * cast.astype(np.float32)
    bezel = round(rng.uniform(3, 8) * px_per_mm)
    body = np.full((sh + 2 * bezel, sw + 2 * bezel, 3), rng.uniform(5, 25), np.float32)
    body[bezel : bezel + sh, bezel : bezel + sw] = img
    return Prop(
        np.clip(body, 0, 255).astype(np.float32), 1.0 / px_per_mm, face_mm,
        (fx + bezel, fy + bezel), glossy=rng.uniform(20, 120), screen_pitch_mm=25.4 / ppi,
        extra={"device": "phone" if phone else "tablet", "ppi": round(ppi),
               "context": round(context, 2)},
    )  # fmt: skip


# -- backgrounds ---------------------------------------------------------------------------


def background_scene(
    rng: np.random.Generator, images: Sequence[Image], size: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """A static scene behind the prop: one of ``images`` (or a plain wall) filling the frame."""
    w, h = size
    k = int(rng.integers(0, len(images) + 1))
    if k == len(images):  # a plain painted wall with a soft light gradient
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(90, 200)
        g = base * (1 + 0.15 * (xx / w - 0.5) * rng.uniform(-1, 1) + 0.1 * (yy / h - 0.5))
        tint = (1 + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)
        return np.asarray(g[..., None] * tint, dtype=np.float32)
    img = images[k].astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    s = max(w / img.shape[1], h / img.shape[0]) * rng.uniform(1.0, 1.6)
    big = _fit(img, math.ceil(img.shape[1] * s), math.ceil(img.shape[0] * s))
    x0 = int(rng.integers(0, big.shape[1] - w + 1))
    y0 = int(rng.integers(0, big.shape[0] - h + 1))
    return np.ascontiguousarray(big[y0 : y0 + h, x0 : x0 + w])


# -- rendering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """Everything fixed over a clip: camera, prop, motion, background and camera noise."""

    spec: AttackSpec
    prop: Prop
    motion: Motion
    background: npt.NDArray[np.float32]  # supersampled
    background_small: npt.NDArray[np.float32]  # camera pixels (the supersampled one averaged)
    exposure_s: float
    noise: tuple[float, float]  # sensor noise variance = a * I + b
    jpeg_quality: int
    lens_sigma: float
    exposure_drift: Wave
    glare_mm: tuple[float, float]  # where the glare sits on the prop at the base pose
    holder: tuple[float, float, float]  # hand: prop x, y (mm) and radius (mm); radius 0: none


def _strips(prop: Prop) -> list[tuple[int, int]]:
    """The prop's texture columns ``[c0, c1)``: one strip, or 16 sharing their edges when bent."""
    n = 16 if prop.bend_radius_mm > 0 else 1
    edges = np.round(np.linspace(0, prop.texture.shape[1], n + 1)).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def _strip_pose(prop: Prop, r: F64, t: F64, u_mid: float) -> tuple[F64, F64]:
    """The rotation and the position of a bent strip's centre line in camera coordinates.

    Paper bent around a vertical axis at ``z = radius`` behind it: the point
    at arc length ``u`` lies at ``(R sin(u/R), v, R (1 - cos(u/R)))`` and the
    strip's plane is turned by ``u/R`` about the vertical axis.
    """
    radius = prop.bend_radius_mm
    if radius <= 0:
        return r, t
    a = u_mid / radius
    local = np.array([radius * math.sin(a), 0.0, radius * (1 - math.cos(a))])
    turn = rotation(0.0, -a, 0.0)  # the tangent at arc length u: (cos a, 0, sin a)
    # The strip's own origin is the point at arc length u_mid; its u axis starts there.
    return r @ turn, t + r @ local - (r @ turn) @ np.array([u_mid, 0.0, 0.0])


def _texture_to_mm(prop: Prop) -> F64:
    """Texture pixels (homogeneous) -> prop millimetres from the face's centre."""
    s = prop.mm_per_px
    return np.array([[s, 0, -prop.origin[0] * s], [0, s, -prop.origin[1] * s], [0, 0, 1.0]])


def _bbox(hm: F64, cols: tuple[float, float], rows: tuple[float, float],
          size: tuple[int, int]) -> tuple[int, int, int, int] | None:  # fmt: skip
    """The image box ``(x0, y0, x1, y1)`` that texture rectangle covers, clipped; None if off."""
    c = np.array([[cols[0], rows[0], 1], [cols[1], rows[0], 1], [cols[1], rows[1], 1],
                  [cols[0], rows[1], 1]], dtype=np.float64).T  # fmt: skip
    p = hm @ c
    if np.any(p[2] <= 1e-6):
        return None
    xy = p[:2] / p[2]
    x0, y0 = max(0, math.floor(xy[0].min()) - 2), max(0, math.floor(xy[1].min()) - 2)
    x1, y1 = min(size[0], math.ceil(xy[0].max()) + 3), min(size[1], math.ceil(xy[1].max()) + 3)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


Region = tuple[int, int, int, int]


def _strip_boxes(scene: Scene, t: float) -> list[tuple[F64, int, int, Region]]:
    """Each strip's homography (texture pixels -> supersampled image), columns and image box."""
    spec, prop = scene.spec, scene.prop
    ss = SUPERSAMPLE
    w, h = spec.size[0] * ss, spec.size[1] * ss
    k = intrinsics(spec.focal * ss, (w, h))
    pose = scene.motion.pose(t)
    r = rotation(pose.pitch, pose.yaw, pose.roll)
    tv = np.array(pose.t, dtype=np.float64)
    tex = prop.texture
    to_mm = _texture_to_mm(prop)
    out = []
    for c0, c1 in _strips(prop):
        u_mid = ((c0 + c1) / 2 - prop.origin[0]) * prop.mm_per_px
        rs, ts = _strip_pose(prop, r, tv, u_mid)
        hm = plane_homography(k, rs, ts) @ to_mm
        box = _bbox(hm, (c0, c1), (0, tex.shape[0]), (w, h))
        if box is not None:
            out.append((hm, c0, c1, box))
    return out


def prop_region(scene: Scene, times: Sequence[float]) -> Region | None:
    """The supersampled image box the prop covers at any of ``times``, on whole camera pixels."""
    boxes = [b for t in times for *_, b in _strip_boxes(scene, t)]
    if not boxes:
        return None
    ss = SUPERSAMPLE
    x0 = min(b[0] for b in boxes) // ss * ss
    y0 = min(b[1] for b in boxes) // ss * ss
    x1 = -(-max(b[2] for b in boxes) // ss) * ss
    y1 = -(-max(b[3] for b in boxes) // ss) * ss
    return x0, y0, x1, y1


def render(scene: Scene, times: Sequence[float], region: Region) -> npt.NDArray[np.float32]:
    """The scene inside ``region`` (linear float RGB, ``SUPERSAMPLE`` times finer) over an exposure.

    The prop is warped at each of ``times`` (sub-frames spread over the
    exposure: motion blur) into a premultiplied RGBA layer (bilinear warping
    against a transparent border premultiplies the edges by itself), the
    layers are averaged and laid over the background once; glare, pixel grid
    and hand are added at the exposure's middle.
    """
    import cv2

    rx0, ry0, rx1, ry1 = region
    layer = np.zeros((ry1 - ry0, rx1 - rx0, 4), np.float32)
    tex = scene.prop.texture  # RGBA
    for t in times:
        for hm, c0, c1, (x0, y0, x1, y1) in _strip_boxes(scene, t):
            x0, y0, x1, y1 = max(x0, rx0), max(y0, ry0), min(x1, rx1), min(y1, ry1)
            if x1 <= x0 or y1 <= y0:
                continue
            # The strip's own columns, warped into the image box they cover.
            shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ hm
            shift = shift @ np.array([[1, 0, c0], [0, 1, 0], [0, 0, 1.0]])
            src = tex if c0 == 0 and c1 == tex.shape[1] else tex[:, c0:c1]
            layer[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] += cv2.warpPerspective(
                src, shift, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT)  # fmt: skip
    layer *= np.float32(1.0 / len(times))
    alpha = np.asarray(np.minimum(layer[..., 3], 1.0), np.float32)
    out = np.asarray(
        scene.background[ry0:ry1, rx0:rx1] * (1.0 - alpha[..., None]) + layer[..., :3], np.float32
    )
    add_effects(scene, out, alpha, float(np.mean(times)), region)
    return out


def add_effects(scene: Scene, img: npt.NDArray[np.float32], coverage: npt.NDArray[np.float32],
                t: float, region: Region) -> None:  # fmt: skip
    """Glare and pixel grid at the pose of time ``t`` on a rendered region (in place)."""
    spec, prop = scene.spec, scene.prop
    ss = SUPERSAMPLE
    w, h = spec.size[0] * ss, spec.size[1] * ss
    k = intrinsics(spec.focal * ss, (w, h))
    pose = scene.motion.pose(t)
    r = rotation(pose.pitch, pose.yaw, pose.roll)
    tv = np.array(pose.t, dtype=np.float64)
    tex = prop.texture
    box = _bbox(plane_homography(k, r, tv) @ _texture_to_mm(prop), (0, tex.shape[1]),
                (0, tex.shape[0]), (w, h))  # fmt: skip
    if box is None:
        return
    box = (max(box[0], region[0]), max(box[1], region[1]), min(box[2], region[2]),
           min(box[3], region[3]))  # fmt: skip
    if box[2] > box[0] and box[3] > box[1]:
        _surface_effects(scene, img, coverage, k, r, tv, pose, box, region[:2])


def _prop_coords(k: F64, r: F64, t: F64, box: Region, step: int = 1) -> tuple[F64, F64]:
    """Prop millimetres ``(u, v)`` seen at every ``step``-th pixel of ``box`` (the flat prop)."""
    x0, y0, x1, y1 = box
    hinv = np.linalg.inv(plane_homography(k, r, t)).astype(np.float32)
    yy, xx = np.mgrid[y0:y1:step, x0:x1:step].astype(np.float32)
    den = hinv[2, 0] * xx + hinv[2, 1] * yy + hinv[2, 2]
    u = (hinv[0, 0] * xx + hinv[0, 1] * yy + hinv[0, 2]) / den
    v = (hinv[1, 0] * xx + hinv[1, 1] * yy + hinv[1, 2]) / den
    return u, v


def _surface_effects(
    scene: Scene, img: npt.NDArray[np.float32], coverage: npt.NDArray[np.float32], k: F64,
    r: F64, t: F64, pose: Pose, box: Region, origin: tuple[int, int],
) -> None:  # fmt: skip
    """Glare on the prop and a screen's pixel grid (in place; the hand is in the texture).

    ``box``: supersampled image pixels; ``img`` (and ``coverage``, the prop's
    share of each pixel) hold the region starting at ``origin``. The glare is
    smooth: it is computed on every 4th pixel and interpolated.
    """
    import cv2

    prop = scene.prop
    x0, y0, x1, y1 = box
    sub = img[y0 - origin[1] : y1 - origin[1], x0 - origin[0] : x1 - origin[0]]
    alpha = coverage[y0 - origin[1] : y1 - origin[1], x0 - origin[0] : x1 - origin[0]]
    base = scene.motion.base
    if prop.screen_pitch_mm > 0:
        # The display's pixel grid (dark gaps between subpixel columns and rows),
        # with the contrast that survives the lens and the pixel at its frequency:
        # sampled at the pixels, what survives aliases into moire.
        dist = math.hypot(*pose.t)
        c = grid_contrast(dist / scene.spec.focal / prop.screen_pitch_mm, scene.lens_sigma)
        if c > 1e-3:
            u, v = _prop_coords(k, r, t, box)
            f = np.float32(2 * math.pi / prop.screen_pitch_mm)
            grid = (1 - 0.25 * c * (1 - np.cos(f * u))) * (1 - 0.15 * c * (1 - np.cos(f * v)))
            sub *= 1 - alpha[..., None] * (1 - grid[..., None])
    if prop.glossy > 0:
        # A mirror reflection turns twice as fast as the mirror: the glare
        # moves over the prop by 2 * (turn) * distance.
        dz = math.hypot(*pose.t)
        gu = scene.glare_mm[0] + 2 * (pose.yaw - base.yaw) * dz
        gv = scene.glare_mm[1] - 2 * (pose.pitch - base.pitch) * dz
        radius = 0.25 * prop.face_mm
        step = 4
        u, v = _prop_coords(k, r, t, box, step)
        g = prop.glossy * np.exp(-((u - gu) ** 2 + (v - gv) ** 2) / np.float32(2 * radius**2))
        glare = cv2.resize(g.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        sub += (glare * alpha)[..., None]


def _camera(scene: Scene, img: npt.NDArray[np.float32], t: float,
            rng: np.random.Generator) -> Image:  # fmt: skip
    """The exposed image (camera pixels) through the lens, the sensor and the encoder."""
    import cv2

    img = np.asarray(cv2.GaussianBlur(img, (0, 0), scene.lens_sigma), dtype=np.float32)
    img = img * np.float32(1.0 + scene.exposure_drift(t))
    a, b = scene.noise
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    img = img + noise * np.sqrt(np.maximum(np.float32(a) * img + np.float32(b), 0))
    out = np.clip(img, 0, 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, scene.jpeg_quality])
    if not ok:
        return out
    dec = np.asarray(cv2.imdecode(enc, cv2.IMREAD_COLOR), dtype=np.uint8)
    return np.ascontiguousarray(dec[..., ::-1])


def _with_hand(prop: Prop, holder: tuple[float, float, float]) -> Prop:
    """Fingers and a thumb over the prop's edge: painted on its texture, so they move with it.

    ``holder``: the hand's centre in prop millimetres and its radius (an ellipse
    1.8 times taller than wide); skin with the shading of fingers across it.
    """
    hx, hy, hr = holder
    tex = prop.texture.copy()
    h, w = tex.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - prop.origin[0]) * prop.mm_per_px
    v = (yy - prop.origin[1]) * prop.mm_per_px
    hand = ((u - hx) ** 2 + ((v - hy) / 1.8) ** 2) < hr**2
    shade = 0.85 + 0.15 * np.cos(u / 3.0)
    skin = np.array([190, 140, 115], np.float32)
    tex[hand, :3] = skin * shade[hand][:, None]
    return replace(prop, texture=tex)


def _prefiltered(prop: Prop, mm_per_pixel: float) -> Prop:
    """The texture area-averaged down to about one texel per rendered pixel.

    A lens and a sensor pixel integrate light over the pixel's footprint, so
    detail finer than a pixel (a halftone's dots, a screen's subpixels) averages
    out instead of aliasing. Warping a much finer texture with bilinear
    sampling would instead point-sample it: moire that no camera makes.
    """
    k = mm_per_pixel / prop.mm_per_px
    if k <= 1.0:
        return prop
    h, w = prop.texture.shape[:2]
    nw, nh = max(2, round(w / k)), max(2, round(h / k))
    tex = _fit(prop.texture, nw, nh)
    sx, sy = nw / w, nh / h
    return replace(prop, texture=tex, mm_per_px=prop.mm_per_px / sx,
                   origin=(prop.origin[0] * sx, prop.origin[1] * sy))  # fmt: skip


def grid_contrast(cycles_per_pixel: float, lens_sigma: float) -> float:
    """What share of a periodic pattern survives lens and pixel: ``|sinc f| exp(-2 pi^2 s^2 f^2)``.

    ``f``: the pattern's frequency in cycles per camera pixel; a pixel
    integrates over its width (a box: ``sinc``), the lens blurs with a
    Gaussian of ``s`` pixels. A phone's subpixels at a door camera's
    resolution (several cycles per pixel) leave almost nothing: no moire.
    """
    f = abs(cycles_per_pixel)
    return float(abs(np.sinc(f)) * math.exp(-2 * math.pi**2 * lens_sigma**2 * f**2))


def make_scene(
    spec: AttackSpec, photo: Image, face: tuple[float, float, float, float],
    backgrounds: Sequence[Image],
) -> Scene:  # fmt: skip
    """Draw a prop, a pose, a hand and a camera for ``spec`` (deterministic per seed)."""
    import cv2

    rng = np.random.default_rng([spec.seed, 24])
    prop = print_prop(rng, photo, face, spec.bent) if spec.prop == "print" else (
        screen_prop(rng, photo, face))  # fmt: skip
    # Distance: the face appears 90-200 px wide in a 640 px frame (scaled to the frame).
    face_px = rng.uniform(90, 200) * spec.size[0] / 640
    z = spec.focal * prop.face_mm / face_px
    off = (rng.uniform(-0.15, 0.15) * spec.size[0], rng.uniform(-0.12, 0.12) * spec.size[1])
    base = Pose(
        math.radians(rng.uniform(-15, 15)), math.radians(rng.uniform(-15, 15)),
        math.radians(rng.uniform(-8, 8)),
        (off[0] * z / spec.focal, off[1] * z / spec.focal, z),
    )  # fmt: skip
    motion = hand_motion(rng, spec.motion, base)
    prop = _prefiltered(prop, z / (spec.focal * SUPERSAMPLE))
    bg = background_scene(rng, backgrounds, spec.size)
    bg = _fit(bg, spec.size[0] * SUPERSAMPLE, spec.size[1] * SUPERSAMPLE)
    alpha = np.ones((*prop.texture.shape[:2], 1), np.float32)
    prop = replace(prop, texture=np.concatenate([prop.texture[..., :3], alpha], axis=2))
    tex_h = prop.texture.shape[0] * prop.mm_per_px
    tex_w = prop.texture.shape[1] * prop.mm_per_px
    u_lo, v_lo = -prop.origin[0] * prop.mm_per_px, -prop.origin[1] * prop.mm_per_px
    holder = (0.0, 0.0, 0.0)
    if rng.uniform() < 0.7:  # a hand at the lower edge or a side
        side = rng.integers(0, 3)
        hx = u_lo + tex_w * (rng.uniform(0.3, 0.7) if side == 0 else (0.0 if side == 1 else 1.0))
        hy = v_lo + tex_h * (1.0 if side == 0 else rng.uniform(0.6, 0.9))
        holder = (hx, hy, rng.uniform(0.08, 0.15) * max(tex_w, tex_h))
        prop = _with_hand(prop, holder)
    return Scene(
        spec=spec, prop=prop, motion=motion, background=bg,
        background_small=np.asarray(cv2.resize(bg, spec.size, interpolation=cv2.INTER_AREA),
                                    dtype=np.float32),
        exposure_s=rng.uniform(0.004, 0.025),
        noise=(rng.uniform(0.02, 0.15), rng.uniform(0.5, 4.0)),
        jpeg_quality=int(rng.integers(70, 96)), lens_sigma=rng.uniform(0.4, 0.8),
        exposure_drift=_wave(rng, rng.uniform(0.0, 0.06), 0.05, 0.4, 2),
        glare_mm=(u_lo + tex_w * rng.uniform(0.1, 0.9), v_lo + tex_h * rng.uniform(0.1, 0.9)),
        holder=holder,
    )  # fmt: skip


MAX_SUBFRAMES = 12


def _subframes(scene: Scene, t: float) -> int:
    """Sub-frames enough that the prop moves at most a pixel between two of them.

    Motion blur is the prop's image integrated over the exposure; averaging a
    few far-apart renders instead would leave ghost copies that no camera makes.
    """
    a = _strip_boxes(scene, t - scene.exposure_s / 2)
    b = _strip_boxes(scene, t + scene.exposure_s / 2)
    if not a or not b:
        return 1
    tex = scene.prop.texture
    corners = np.array([[0, 0, 1], [tex.shape[1], 0, 1], [0, tex.shape[0], 1],
                        [tex.shape[1], tex.shape[0], 1]], dtype=np.float64).T  # fmt: skip
    pa, pb = a[0][0] @ corners, b[0][0] @ corners
    move = np.abs(pa[:2] / pa[2] - pb[:2] / pb[2]).max() / SUPERSAMPLE  # camera pixels
    return int(min(MAX_SUBFRAMES, max(1, math.ceil(move / 1.0) + 1)))


def frames(scene: Scene) -> Iterator[Image]:
    """The clip's frames, at ``spec.fps`` for ``spec.seconds``.

    Only the prop's region is rendered finely; it is averaged down to camera
    pixels (area integration) and pasted over the background, which the
    same averaging made once.
    """
    import cv2

    spec = scene.spec
    rng = np.random.default_rng([spec.seed, 30])
    n = max(1, round(spec.fps * spec.seconds))
    ss = SUPERSAMPLE
    for i in range(n):
        t = i / spec.fps
        subs = _subframes(scene, t)
        times = (
            [t + scene.exposure_s * (j / (subs - 1) - 0.5) for j in range(subs)]
            if subs > 1
            else [t]
        )
        frame = scene.background_small.copy()
        region = prop_region(scene, times)
        if region is not None:
            img = render(scene, times, region)
            x0, y0, x1, y1 = region
            small = cv2.resize(
                img, ((x1 - x0) // ss, (y1 - y0) // ss), interpolation=cv2.INTER_AREA
            )
            frame[y0 // ss : y1 // ss, x0 // ss : x1 // ss] = small
        yield _camera(scene, frame, t, rng)


def with_seed(spec: AttackSpec, seed: int) -> AttackSpec:
    return replace(spec, seed=seed)


def registry_backgrounds() -> list[Image]:
    """Scenes from scikit-image's data (a garage, bricks, gravel, grass, a lab, a rocket)."""
    from edge.imageio import read_image

    try:
        import skimage
    except ImportError:
        return []
    d = Path(skimage.__file__).parent / "data"
    names = ("motorcycle_left.png", "brick.png", "gravel.png", "grass.png", "coffee.png",
             "rocket.jpg")  # fmt: skip
    out = []
    for n in names:
        if (d / n).is_file():
            img = read_image(d / n)
            out.append(img)
    return out
