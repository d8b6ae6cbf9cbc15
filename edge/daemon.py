"""The headless service behind ``facegate run --config PATH``.

Start order: publisher (MQTT, or JSON lines on stdout when MQTT is off; it
connects and delivers any backlog, but says ``offline``), recognizer (models
verified against their manifests, gallery opened), frame capture. Once the
first frame has been processed the service is *ready*: the publisher gets the
complete state and the enrolled names and announces ``online`` (with Home
Assistant discovery), and systemd gets ``READY=1``. A service that fails
before that (bad model, gallery or camera) never says ``online``. The loop
takes the newest frame, recognizes it, feeds the
:class:`~edge.decide.tracker.Tracker` (which ends a track whose face changes
identity, at the recognizer's calibrated threshold) and publishes each
decision. Shutdown goes in reverse order (capture, publisher), each part
joined with a timeout, so SIGTERM ends the process within
``service.stop_timeout_s``.

Signals only set events: SIGTERM/SIGINT the stop event, SIGHUP a gallery
reload (as does the MQTT ``reload-gallery`` command); the loop acts on them.

Watchers (:class:`Watcher`) see every frame's result and decisions after
the door and the publisher did, on the loop's thread: the unknown-visitor
review and the signed "enrol the next face" (:mod:`edge.review.watch`), each
only when configured. The loop treats them all alike.

The systemd watchdog is pinged only while the service is healthy: a frame was
processed within the last half watchdog period and the publisher's network
thread is alive. A stuck camera or a dead MQTT thread therefore gets the
service restarted by systemd instead of running blind.

A replay (folder or video file) delivers every frame, paced at
``camera.fps`` when ``camera.realtime``; without ``camera.loop`` it ends the
daemon with exit status 0 once every frame was processed. A live camera
keeps only the newest frame.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, cast

from edge.decide.tracker import Tracker
from edge.delivery.mqtt import MqttPublisher
from edge.delivery.publishers import PublisherLike, StdoutPublisher
from edge.errors import FacegateError
from edge.files import StateLock
from edge.fleet.device import FleetDevice
from edge.homeassistant.extension import HomeAssistant
from edge.homeassistant.review import UnknownNotifier
from edge.sdnotify import Notifier, watchdog_interval
from edge.types import Decision, Frame, FrameResult

if TYPE_CHECKING:
    from edge.config import Config
    from edge.decide.gate import LivenessGate
    from edge.delivery.extension import Extension
    from edge.delivery.outbox import Outbox
    from edge.door.controller import DoorController
    from edge.identity.gallery import Gallery
    from edge.review.watch import EnrolRecognizer

log = logging.getLogger("facegate.daemon")

# How long one wait for a frame may block: bounds the reaction time to the
# stop event, to reload requests and to watchdog pings.
FRAME_WAIT_S = 0.2
# How often the fps figure, systemd's STATUS= line and the publisher's copy of
# the state are refreshed (the publisher sends it once per mqtt.state_interval_s).
STATUS_EVERY_S = 5.0


class Publisher(MqttPublisher):
    """The device's MQTT publisher: the delivery core with the extensions that watch it.

    :class:`~edge.delivery.mqtt.MqttPublisher` carries events, state and
    commands; the extensions (Home Assistant: :mod:`edge.homeassistant`)
    hang off it here, where the service is put together, so the delivery
    stage never imports them.
    """

    def __init__(self, cfg: Config, outbox: Outbox | None = None) -> None:
        self.unknown_notifier = UnknownNotifier(cfg)
        # fleet: with fleet.enabled the gallery comes from the site's bundles.
        self.fleet = FleetDevice(cfg) if cfg.fleet.enabled else None
        extensions: list[Extension] = [HomeAssistant(cfg), self.unknown_notifier]
        if self.fleet is not None:
            extensions.append(self.fleet)
        super().__init__(cfg, outbox, extensions=extensions)
        if self.fleet is not None:
            self.fleet.events = self
            self.fleet.on_state = self.publish_state_now


def make_publisher(cfg: Config) -> PublisherLike:
    """The MQTT publisher when ``mqtt.enabled``, else JSON lines on stdout."""
    if cfg.mqtt.enabled:
        return Publisher(cfg)
    return StdoutPublisher(cfg)


class RecognizerLike(Protocol):
    """What the daemon needs from :class:`edge.decide.recognizer.Recognizer`."""

    @property
    def gallery(self) -> Gallery: ...

    @property
    def model_sha256(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    def set_gallery(self, gallery: Gallery) -> None: ...

    def process(self, frame: Frame) -> FrameResult: ...


class Watcher(Protocol):
    """Something that watches the decision flow from beside it (:mod:`edge.review.watch`)."""

    @property
    def wants_frames(self) -> bool:
        """Whether decisions must carry their crops (the tracker is handed each frame)."""
        ...

    def observe(self, frame: Frame, result: FrameResult, decisions: Sequence[Decision]) -> None: ...


class CaptureLike(Protocol):
    """What the daemon needs from :class:`edge.sources.CaptureThread`."""

    dropped: int
    captured: int

    def start(self) -> None: ...

    def get(self, timeout: float) -> Frame | None: ...

    def join(self, timeout: float) -> None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def finished(self) -> bool: ...


def make_capture(cfg: Config, stop: threading.Event) -> CaptureLike:
    """The configured frame source in its capture thread (not started)."""
    from edge.sources import CaptureThread, open_source

    source = open_source(cfg)
    # A live camera keeps only the newest frame (stale ones are dropped); a
    # replay (folder, video file) delivers every frame, so it gives the same
    # decisions on every run, paced at camera.fps when camera.realtime.
    keep_all = not source.live
    cap: CaptureLike = CaptureThread(source, stop, keep_all=keep_all)
    return cap


class _Health:
    """Decides when to ping the systemd watchdog (and pings it)."""

    def __init__(self, notifier: Notifier, publisher: PublisherLike, interval: float | None):
        self.notifier = notifier
        self.publisher = publisher
        self.interval = interval
        now = time.monotonic()
        # Counting from start-up gives the camera half a period to deliver.
        self.last_frame = now
        self.last_ping = 0.0
        self.unhealthy_logged = False

    def frame_done(self) -> None:
        self.last_frame = time.monotonic()

    def tick(self) -> None:
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self.last_ping < self.interval / 4:
            return
        fresh = now - self.last_frame <= self.interval / 2
        mqtt_ok = self.publisher.alive()
        if fresh and mqtt_ok:
            self.notifier.watchdog()
            self.last_ping = now
            self.unhealthy_logged = False
        elif not self.unhealthy_logged:
            why = "no frame processed recently" if not fresh else "MQTT thread not alive"
            log.warning("withholding watchdog ping: %s", why)
            self.unhealthy_logged = True


def _event_line(d: Decision, payload: dict[str, Any]) -> str:
    who = d.name if d.name is not None else "-"
    seq = payload.get("seq", "?")
    return (
        f"event seq={seq} {d.kind} name={who} track={d.track_id} frames={d.track_length} "
        f"distance={d.distance:.3f} confidence={d.confidence:.2f}"
        + ("" if d.liveness is None else f" liveness={d.liveness.reason}")
    )


def run(
    cfg: Config,
    stop: threading.Event,
    publisher: PublisherLike | None = None,
    *,
    reload: threading.Event | None = None,
    notifier: Notifier | None = None,
    recognizer: RecognizerLike | None = None,
    capture_factory: Callable[[Config, threading.Event], CaptureLike] = make_capture,
    door_factory: Callable[[Config, PublisherLike], DoorController] | None = None,
    watchers_factory: Callable[..., list[Watcher]] | None = None,
) -> int:
    """Run the service until ``stop`` is set or a finite replay ends; the exit status.

    0: stopped on request or replay finished; 1: the frame source or the loop
    failed at runtime (systemd restarts us). Start-up problems (bad model,
    gallery, camera) raise :class:`FacegateError`.
    """
    notifier = notifier or Notifier()
    reload = reload or threading.Event()
    # One process per state_dir (outbox, audit log, door state): a second one
    # stops here, before it touches the relay or the broker.
    with _state_lock(cfg):
        pub = publisher or make_publisher(cfg)
        # door: built (relay released) before anything else starts; it gets every
        # decision in-process from this loop, never from the broker or the outbox.
        door = _door(cfg, pub, door_factory) if cfg.door.enabled else None
        return _run(
            cfg, stop, pub, door, reload, notifier, recognizer, capture_factory, watchers_factory
        )


def _state_lock(cfg: Config) -> contextlib.AbstractContextManager[object]:
    """The state_dir's lock (:class:`edge.files.StateLock`) when the daemon writes state there."""
    if not (cfg.mqtt.enabled or cfg.door.enabled or cfg.review.keep_unknown):
        return contextlib.nullcontext()
    return StateLock(cfg.state_dir)


def _run(
    cfg: Config,
    stop: threading.Event,
    pub: PublisherLike,
    door: DoorController | None,
    reload: threading.Event,
    notifier: Notifier,
    recognizer: RecognizerLike | None,
    capture_factory: Callable[[Config, threading.Event], CaptureLike],
    watchers_factory: Callable[..., list[Watcher]] | None = None,
) -> int:
    """The service with its publisher and door made: start, loop, shut down."""
    cap_stop = threading.Event()
    cap: CaptureLike | None = None
    fleet = pub.fleet if isinstance(pub, Publisher) else None
    if door is not None and fleet is not None:  # fleet: hold grants until synced
        door.gate = fleet.gate
    notifier.status("starting")
    pub.start()
    try:
        # This also opens the gallery: a bad one fails start-up, before READY.
        rec = recognizer if recognizer is not None else _load_recognizer(cfg, fleet)
        _check_fleet_model(rec, fleet)
        if door is not None:  # door: an allow/schedule entry that matches nobody (issue 19)
            door.check_gallery(rec.gallery)
        _wire_commands(pub, reload, door)
        watchers = (watchers_factory or make_watchers)(cfg, pub, rec, reload)
        cap = capture_factory(cfg, cap_stop)
        cap.start()
        loop = _Loop(cfg, pub, rec, cap, door, notifier, reload, fleet, watchers)
        return loop.run(stop)
    except FacegateError:
        raise
    except Exception:
        log.exception("service loop failed")
        return 1
    finally:
        _shutdown(cfg, pub, cap, cap_stop, door, notifier)


def make_watchers(
    cfg: Config, pub: PublisherLike, rec: RecognizerLike, reload: threading.Event
) -> list[Watcher]:
    """The configured watchers: the unknown-visitor ring, remote enrolment (none by default)."""
    out: list[Watcher] = []
    # The service's recognizer is an edge.decide.recognizer.Recognizer (tests may hand
    # in a stand-in without these features); the review reads its calibration.
    full = cast("EnrolRecognizer", rec)
    if cfg.review.keep_unknown:
        from edge.review.ring import ring_for_config
        from edge.review.watch import UnknownReview

        notify = pub.unknown_notifier.push if isinstance(pub, Publisher) else None
        ring = ring_for_config(cfg, full.calibration.threshold)
        out.append(UnknownReview(ring, rec.model_sha256, notify))
    if cfg.review.enrol_command:
        from edge.review.watch import RemoteEnrolment

        verify, authentic = _enrol_verifier(cfg)
        enrol = RemoteEnrolment(cfg, full, verify, reload, pub.publish_event)
        pub.verify_enrol = authentic  # forged commands spend no token of the rate limit
        pub.on_enrol = enrol.command
        out.append(enrol)
    return out


def _enrol_verifier(
    cfg: Config,
) -> tuple[Callable[[bytes], tuple[str | None, str | None]], Callable[[bytes], bool]]:
    """The enrol command's checks, the door's signed-command code with the review's key: the
    whole verification, and the stateless one the command gate runs first."""
    from edge.clock import clock_synced
    from edge.config.environment import check_enrol_key
    from edge.door.remote import NonceCache, authentic_enrol, verify_enrol

    key = cfg.review.enrol_key.read(cfg.base_dir)
    if key is None:
        raise FacegateError("review.enrol_command: no review.enrol_key configured")
    if cfg.events.sign_key.configured:
        check_enrol_key(key, cfg.events.sign_key.read(cfg.base_dir))
    nonces = NonceCache()

    def verify(payload: bytes) -> tuple[str | None, str | None]:
        return verify_enrol(
            payload,
            key=key,
            device_id=cfg.device.id,
            now=time.time(),
            mono=time.monotonic(),
            synced=clock_synced(),
            nonces=nonces,
        )

    return verify, lambda payload: authentic_enrol(payload, key=key, device_id=cfg.device.id)


def _load_recognizer(cfg: Config, fleet: FleetDevice | None = None) -> RecognizerLike:
    from edge.decide.recognizer import Recognizer

    if fleet is not None:  # fleet: the bundle held, never gallery.path
        return Recognizer.from_config(cfg, gallery=fleet.gallery())
    return Recognizer.from_config(cfg)


def _check_fleet_model(rec: RecognizerLike, fleet: FleetDevice | None) -> None:
    """The fleet checks bundles against the embedder the recognizer really loaded."""
    if fleet is not None and fleet.model_sha256 != rec.model_sha256:
        raise FacegateError(
            f"fleet: the embedder manifest names model {fleet.model_sha256[:12]}..., the "
            f"recognizer loaded {rec.model_sha256[:12]}...; restart"
        )


def _wire_commands(
    pub: PublisherLike, reload: threading.Event, door: DoorController | None
) -> None:
    """Commands from the broker: a gallery reload (flagged for the loop), the door's unlock."""

    def on_command(cmd: str) -> None:
        # Called on the MQTT thread: only flag it, the loop does the work.
        if cmd == "reload-gallery":
            reload.set()

    pub.on_command = on_command
    if door is not None:  # door: the signed remote unlock (refused unless enabled)
        pub.on_unlock = door.remote_command
        # Verify before spending: a wrong-key flood costs no token of the rate limit.
        pub.verify_unlock = door.authentic


class _Loop:
    """The running service, one frame at a time: reloads, readiness, decisions, status."""

    def __init__(
        self,
        cfg: Config,
        pub: PublisherLike,
        rec: RecognizerLike,
        cap: CaptureLike,
        door: DoorController | None,
        notifier: Notifier,
        reload: threading.Event,
        fleet: FleetDevice | None = None,
        watchers: Sequence[Watcher] = (),
    ) -> None:
        self.cfg, self.pub, self.rec, self.cap, self.door = cfg, pub, rec, cap, door
        self.notifier, self.reload, self.fleet = notifier, reload, fleet
        self.watchers = tuple(watchers)
        # Decisions carry their crops for the snapshot topic or a watcher that keeps them.
        self.want_frames = cfg.mqtt.snapshot or any(w.wants_frames for w in self.watchers)
        self.model_sha = rec.model_sha256
        # A face that jumps identity by more than the open-set threshold is
        # someone else: it ends its track (edge.decide.tracker.identity_jump).
        self.tracker = Tracker(cfg.decision, identity_threshold=rec.threshold)
        # liveness: decisions wait for their track's verdict (edge.decide.gate).
        self.gate = make_gate(cfg)
        self.last_seen: tuple[Frame, FrameResult] | None = None
        self.health = _Health(notifier, pub, watchdog_interval())
        self.started = time.monotonic()
        self.frames = self.events = 0
        self.fps = 0.0
        self.window_start, self.window_frames = self.started, 0
        self.ready = self.present = False
        log.info(
            "started: device=%s source=%s gallery=%d people model=%s threshold=%.3f",
            cfg.device.id,
            cfg.camera.source,
            len(rec.gallery),
            self.model_sha[:12],
            rec.threshold,
        )

    def run(self, stop: threading.Event) -> int:
        """Until ``stop``, the end of a replay (0) or a dead source or door (1)."""
        while not stop.is_set():
            if self.reload.is_set():
                self.reload.clear()
                self.reload_gallery()
            if self.fleet is not None:
                self.apply_fleet(self.fleet)
            frame = self.cap.get(timeout=FRAME_WAIT_S)
            if frame is not None:
                self.on_frame(frame)
            elif self.cap.finished:
                self.flush_held()
                log.info("replay finished after %d frames, %d events", self.frames, self.events)
                return 0
            elif not self.cap.alive:
                log.error("frame source stopped delivering frames")
                return 1
            if self.door is not None and not self.door.alive():  # door: relay owner died
                log.error("door controller stopped; exiting for a restart")
                return 1
            self.health.tick()
            self.tick_status(time.monotonic())
        return 0

    def publish_state(self, now: float) -> None:
        self.pub.set_state(
            status="running",
            fps=round(self.fps, 2),
            frames=self.frames,
            dropped=self.cap.dropped,
            events=self.events,
            gallery_size=len(self.rec.gallery),
            uptime_s=round(now - self.started, 1),
            model_sha256=self.model_sha,
        )

    def reload_gallery(self) -> None:
        """The gallery file again (SIGHUP, ``reload-gallery``); the old one stays on failure."""
        from edge.identity.gallery import reload_for_config

        if self.fleet is not None:
            log.warning("gallery reload ignored: the gallery comes from the fleet (fleet.enabled)")
            return
        if self.door is not None:  # door: fail-secure on reload
            self.door.release("reload")
        try:
            self.rec.set_gallery(reload_for_config(self.cfg, self.rec.gallery))
        except FacegateError as e:
            log.error("gallery reload failed, keeping the old one: %s", e)
            return
        log.info("gallery reloaded: %d people", len(self.rec.gallery))
        self.drop_held("gallery reload")
        if self.door is not None:
            self.door.check_gallery(self.rec.gallery, strict=False)
        # The open-set threshold follows the gallery size: so does the
        # identity check of the tracks (the tracks themselves go on).
        self.tracker.identity_threshold = self.rec.threshold
        self.publish_state(time.monotonic())
        self.pub.set_gallery(self.rec.gallery.names)  # re-announced, state sent now

    def apply_fleet(self, fleet: FleetDevice) -> None:
        """A new bundle from the fleet, swapped in like a reload (door released first)."""
        pending = fleet.take_pending()
        if pending is None:
            return
        if self.door is not None:  # door: fail-secure on reload
            self.door.release("fleet gallery")
        try:
            self.rec.set_gallery(pending.gallery)
        except (FacegateError, ValueError) as e:
            fleet.apply_failed(pending, e)
            return
        self.drop_held("fleet gallery")
        fleet.applied(pending)  # only now do grants resume
        self.tracker.identity_threshold = self.rec.threshold
        self.publish_state(time.monotonic())
        self.pub.set_gallery(self.rec.gallery.names)  # re-announced, state sent now

    def on_frame(self, frame: Frame) -> None:
        """Recognize, decide, hand each decision to the door and the publisher."""
        result = self.rec.process(frame)
        if not self.ready:
            self.become_ready()
        decisions = self.tracker.update(result, frame.image if self.want_frames else None)
        if self.gate is not None:
            decisions = self.gate.update(
                frame.image, frame.timestamp, self.tracker.assigned, decisions
            )
        self.emit(decisions)
        self.observe(frame, result, decisions)
        self.frames += 1
        self.window_frames += 1
        self.health.frame_done()
        if (self.tracker.active_tracks > 0) != self.present:
            self.present = not self.present
            self.pub.set_presence(self.present)

    def observe(self, frame: Frame, result: FrameResult, decisions: Sequence[Decision]) -> None:
        """The watchers see each frame and the decisions that left with it."""
        self.last_seen = (frame, result)
        for w in self.watchers:
            try:
                w.observe(frame, result, decisions)
            except Exception:  # a watcher's bug must not stop the door
                log.exception("%s failed on frame %d", type(w).__name__, frame.index)

    def flush_held(self) -> None:
        """The frames ended: what waited for liveness leaves now, verdicts as they stand."""
        if self.gate is None or self.last_seen is None:
            return
        held = self.gate.flush()
        if held:
            self.emit(held)
            # The watchers hear of them with the last frame but no faces: that
            # frame's faces were seen already (an enrolment must not keep it twice).
            frame, result = self.last_seen
            self.observe(frame, replace(result, faces=()), held)

    def drop_held(self, why: str) -> None:
        """Decisions waiting for liveness were made with the old gallery: never act on them."""
        n = self.gate.drop() if self.gate is not None else 0
        if n:
            log.info("%s: %d decision(s) waiting for liveness dropped", why, n)

    def emit(self, decisions: Sequence[Decision]) -> None:
        """Each decision to the door (first) and the publisher."""
        for d in decisions:
            if self.door is not None:  # door: every decision, live from the tracker
                self.door.on_decision(d, self.rec.gallery)
            payload = self.pub.publish_decision(d)
            self.events += 1
            log.info("%s", _event_line(d, payload))

    def become_ready(self) -> None:
        """Models loaded and the camera delivered: only now "online", before any decision."""
        self.ready = True
        self.publish_state(time.monotonic())
        self.pub.set_gallery(self.rec.gallery.names)
        self.pub.set_ready()
        self.notifier.ready(f"running, {len(self.rec.gallery)} people enrolled")
        log.info("ready: first frame processed")

    def tick_status(self, now: float) -> None:
        """Every :data:`STATUS_EVERY_S`: the fps figure, systemd's STATUS=, the state."""
        if now - self.window_start < STATUS_EVERY_S:
            return
        self.fps = self.window_frames / (now - self.window_start)
        self.window_start, self.window_frames = now, 0
        self.notifier.status(f"{self.fps:.1f} fps, {self.frames} frames, {self.events} events")
        self.publish_state(now)


def make_gate(cfg: Config) -> LivenessGate | None:
    """The liveness gate ``[liveness]`` asks for (None with ``mode = "off"``)."""
    if cfg.liveness.mode == "off":
        return None
    from edge.decide.gate import LivenessGate
    from edge.liveness.stage import LivenessStage

    stage = LivenessStage.from_config(cfg)
    log.info("liveness: %s, decisions wait up to %.1f s", cfg.liveness.mode,
             cfg.liveness.max_wait_s)  # fmt: skip
    return LivenessGate(stage, cfg.liveness.max_wait_s)


def _shutdown(
    cfg: Config,
    pub: PublisherLike,
    cap: CaptureLike | None,
    cap_stop: threading.Event,
    door: DoorController | None,
    notifier: Notifier,
) -> None:
    """Stop in reverse order within ``service.stop_timeout_s``: door, capture, publisher."""
    budget = cfg.service.stop_timeout_s
    if door is not None:  # door: released first, before anything else stops
        door.stop(timeout=min(2.0, budget * 0.2), why="service stopping")
    notifier.stopping("stopping")
    t_stop = time.monotonic()
    # Capture first (no new frames), then the publisher (which flushes what
    # it can and keeps the rest in its outbox).
    cap_stop.set()
    if cap is not None:
        cap.join(timeout=budget * 0.4)
        if cap.alive:
            log.warning("capture thread did not stop in time")
    remaining = max(0.5, budget - (time.monotonic() - t_stop) - 0.5)
    try:
        pub.set_state(status="offline")
        pub.set_presence(False)  # a stopped camera sees nobody (retained)
    except Exception as e:  # the state is a courtesy; stopping must go on
        log.debug("final state not published: %s", e)
    pub.stop(timeout=remaining)
    notifier.close()
    log.info("stopped in %.2f s", time.monotonic() - t_stop)


def _door(
    cfg: Config,
    pub: PublisherLike,
    factory: Callable[[Config, PublisherLike], DoorController] | None,
) -> DoorController:
    if factory is not None:
        return factory(cfg, pub)
    from edge.door.controller import make_door

    return make_door(cfg, pub)


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        # journald adds timestamps; keep lines short.
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("facegate").setLevel(level)
    logging.getLogger("edge").setLevel(level)


def main_run(config_path: str) -> int:
    """``facegate run --config PATH``: load the config, handle signals, run.

    Bad input becomes one ``facegate: error: ...`` line and exit status 2.
    """
    from edge.config import load_config

    stop = threading.Event()
    reload = threading.Event()

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    def on_hup(signum: int, _frame: FrameType | None) -> None:
        reload.set()

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        # door: systemd's watchdog sends SIGABRT; stop cleanly so the relay is released.
        signal.SIGABRT: signal.signal(signal.SIGABRT, on_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, on_hup),
    }
    try:
        cfg = load_config(config_path)
        _configure_logging(cfg.service.log_level)
        return run(cfg, stop, reload=reload)
    except FacegateError as e:
        print(f"facegate: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.daemon", description=__doc__)
    ap.add_argument("--config", required=True, help="TOML config file")
    args = ap.parse_args(argv)
    return main_run(args.config)


if __name__ == "__main__":
    raise SystemExit(main())
