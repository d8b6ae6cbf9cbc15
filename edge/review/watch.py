"""What watches the decision flow beside the door: the unknown-visitor ring and remote enrolment.

The daemon hands every watcher each frame, its recognition result and the
decisions the tracker made on it (:meth:`UnknownReview.observe`,
:meth:`RemoteEnrolment.observe`), on the loop's thread, after the door and
the publisher had them; a watcher never holds the loop up for long and
never lets an error of its own stop it (it logs it). Neither the door nor
the MQTT side knows the watchers.

* :class:`UnknownReview` (``review.keep_unknown``): each ``unknown``
  decision with a crop and an embedding becomes a visit in the
  :class:`~edge.review.ring.ReviewRing`; the ring is pruned every
  :data:`PRUNE_EVERY_S` too, so expired visits leave the disk even when
  nobody new comes. ``notify`` (``review.notify``) hears of each new visit.
* :class:`RemoteEnrolment` (``review.enrol_command``): a signed MQTT command
  "enrol the next face as N" (verified by the callable the daemon hands
  in: :func:`edge.door.remote.verify_enrol`) opens a window of
  ``review.enrol_timeout_s``; the frames of that window go through camera
  enrolment (:class:`~edge.identity.camera.CameraCollector`) and the whole
  enrolment decision (:func:`~edge.identity.enrol.plan_enrolment`), the
  gallery file is written and the daemon reloads it, as after ``facegate
  enroll``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edge.errors import FacegateError
from edge.identity.camera import CameraCollector, CameraRules
from edge.identity.enrol import (
    PhotoMeasure,
    lookalike_message,
    outlier_distance,
    plan_enrolment,
)
from edge.identity.gallery import Gallery, check_new_name
from edge.identity.thresholds import OperatingPoint
from edge.imageio import encode_jpeg
from edge.review.ring import ReviewRing, Visit
from edge.types import Decision, Frame, FrameResult, Image

if TYPE_CHECKING:
    from edge.config import Config
    from edge.vision.manifest import Calibration

log = logging.getLogger("facegate.review")

PRUNE_EVERY_S = 600.0
"""How often the daemon prunes the ring when no visit comes (monotonic seconds)."""
CROP_MAX_SIDE = 320
"""The stored crop's longer side at most (enough to enrol from: faces need 50 px)."""
CROP_QUALITY = 90
UNKNOWN = "unknown"

Notify = Callable[[Visit, int], None]
"""Told of each new visit and how many visits its entry has now."""
EventSink = Callable[[str, dict[str, Any]], object]
"""``publish_event(kind, fields)``: an event on the event topic (enrolment outcomes)."""
Verify = Callable[[bytes], tuple[str | None, str | None]]
"""A command payload -> (why refused or None, the name to enrol)."""


class UnknownReview:
    """Unknown decisions into the ring (see the module docstring)."""

    def __init__(
        self,
        ring: ReviewRing,
        model_sha256: str,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ring = ring
        self.model_sha256 = model_sha256
        self.notify = notify
        self.clock = clock
        self.kept = 0
        self.failed = 0
        self._next_prune = clock()

    wants_frames = True
    """The tracker must be handed frames: a visit needs its crop."""

    def observe(self, frame: Frame, result: FrameResult, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if d.kind == UNKNOWN:
                self._keep(d)
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            try:
                self.ring.prune()
            except FacegateError as e:
                log.error("review: pruning the ring failed: %s", e)

    def _keep(self, d: Decision) -> None:
        if d.embedding is None or d.snapshot is None or not d.snapshot.size:
            return
        try:
            jpeg = encode_jpeg(d.snapshot, CROP_MAX_SIDE, CROP_QUALITY)
            visit = self.ring.add(
                d.embedding,
                jpeg,
                distance=d.distance,
                track_length=d.track_length,
                model_sha256=self.model_sha256,
                ts=d.timestamp,
            )
        except FacegateError as e:
            self.failed += 1
            log.error("review: an unknown visitor could not be kept: %s", e)
            return
        self.kept += 1
        visits = sum(1 for v in self.ring.visits() if v.cluster == visit.cluster)
        log.info("review: unknown visitor %d (visit %d of %d)", visit.cluster, visit.id, visits)
        if self.notify is not None:
            try:
                self.notify(visit, visits)
            except Exception:  # a notification must never stop the loop
                log.exception("review: notifying of visit %d failed", visit.id)

    def close(self) -> None:
        """Nothing is held open between visits."""


class EnrolRecognizer(Protocol):
    """What remote enrolment needs from :class:`edge.decide.recognizer.Recognizer`."""

    @property
    def calibration(self) -> Calibration: ...

    @property
    def gallery(self) -> Gallery: ...

    def measure_photo(self, rgb: Image) -> PhotoMeasure: ...

    def operating_point_for(self, comparisons: int) -> OperatingPoint: ...


@dataclass
class _Request:
    name: str
    deadline: float  # monotonic
    collector: CameraCollector
    advice: str = ""


class RemoteEnrolment:
    """ "Enrol the next face as N", signed, while the service runs (see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        rec: EnrolRecognizer,
        verify: Verify,
        reload: threading.Event,
        events: EventSink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.rec = rec
        self.verify = verify
        self.reload = reload
        self.events = events
        self.clock = clock
        self._lock = threading.Lock()
        self._request: _Request | None = None

    wants_frames = False

    def command(self, payload: bytes) -> None:
        """A command payload from the broker (MQTT thread): verified, then the window opens."""
        why, name = self.verify(payload)
        if why is None and name is not None:
            try:
                name = check_new_name(name)
            except FacegateError as e:
                why = f"bad_name: {e}"
        with self._lock:
            if why is None and self._request is not None:
                why = "busy"
            if why is None and name is not None:
                rules = CameraRules(
                    photos=self.cfg.review.enrol_photos,
                    max_distance=outlier_distance(self.rec.calibration),
                )
                deadline = self.clock() + self.cfg.review.enrol_timeout_s
                self._request = _Request(name, deadline, CameraCollector(rules))
        if why is not None:
            log.warning("review: enrol command refused: %s", why)
            self.events("enrol_refused", {"reason": why})
            return
        log.info("review: enrolling the next face as %r", name)
        self.events("enrol_started", {"name": name, "seconds": self.cfg.review.enrol_timeout_s})

    @property
    def pending(self) -> str | None:
        """The name being enrolled now, or None."""
        with self._lock:
            return None if self._request is None else self._request.name

    def observe(self, frame: Frame, result: FrameResult, decisions: Sequence[Decision]) -> None:
        with self._lock:
            req = self._request
        if req is None:
            return
        if result.faces:
            req.collector.offer(self.rec.measure_photo(frame.image))
            if req.collector.advice != req.advice:
                req.advice = req.collector.advice
                log.info("review: enrolling %r: %s", req.name, req.advice)
        if req.collector.done or self.clock() >= req.deadline:
            with self._lock:
                self._request = None
            try:
                self._finish(req)
            except FacegateError as e:
                log.error("review: enrolling %r failed: %s", req.name, e)
                self.events("enrol_failed", {"name": req.name, "reason": str(e)})

    def _finish(self, req: _Request) -> None:
        """Plan, write the gallery, have the daemon reload it; the outcome as an event."""
        chosen = req.collector.chosen()
        if not chosen:
            raise FacegateError(f"no usable frame ({req.collector.summary()})")
        gallery = _gallery_now(self.cfg, self.rec.gallery)
        names, emb, starts = gallery.matrix()
        plan = plan_enrolment(
            req.name, chosen, names, emb, starts, self.rec.calibration, self.rec.operating_point_for
        )
        if not plan.accepted:
            why = "; ".join(sorted({r for _, r in plan.refused})) or "every frame refused"
            raise FacegateError(why)
        gallery.add(req.name, plan.embeddings)
        from edge.identity.gallery import gallery_key

        gallery.save(self.cfg.resolve(self.cfg.gallery.path), gallery_key(self.cfg))
        self.reload.set()
        looks = [lookalike_message(la) for la in plan.lookalikes]
        for text in looks:
            log.warning("review: %s", text)
        log.info("review: enrolled %r from %d frame(s)", req.name, len(plan.accepted))
        self.events(
            "enrolled",
            {"name": req.name, "photos": len(plan.accepted), "lookalikes": looks},
        )

    def close(self) -> None:
        with self._lock:
            self._request = None


def _gallery_now(cfg: Config, current: Gallery) -> Gallery:
    """The gallery file as it is now (another enrolment may have changed it), or an empty one."""
    from edge.errors import GalleryError
    from edge.files import exists
    from edge.identity.gallery import reload_for_config

    if not exists(cfg.resolve(cfg.gallery.path), "gallery", GalleryError):
        return Gallery(
            current.model_sha256, current.embedding_size, manifest_sha256=current.manifest_sha256
        )
    return reload_for_config(cfg, current)


__all__ = ["PRUNE_EVERY_S", "EnrolRecognizer", "RemoteEnrolment", "UnknownReview"]
