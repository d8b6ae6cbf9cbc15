"""The headless service behind ``facegate run --config PATH``.

Start order: publisher (MQTT, or JSON lines on stdout when MQTT is off; it
connects and delivers any backlog, but says ``offline``), recognizer (models
verified against their manifests, gallery opened), frame capture. Once the
first frame has been processed the service is *ready*: the publisher gets the
complete state and the enrolled names and announces ``online`` (with Home
Assistant discovery), and systemd gets ``READY=1``. A service that fails
before that (bad model, gallery or camera) never says ``online``. The loop
takes the newest frame, recognizes it, feeds the
:class:`~edge.tracker.Tracker` (which ends a track whose face changes
identity, at the recognizer's calibrated threshold) and publishes each
decision. Shutdown goes in reverse order (capture, publisher), each part
joined with a timeout, so SIGTERM ends the process within
``service.stop_timeout_s``.

Signals only set events: SIGTERM/SIGINT the stop event, SIGHUP a gallery
reload (as does the MQTT ``reload-gallery`` command); the loop acts on them.

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
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from edge.errors import FacegateError
from edge.sdnotify import Notifier, watchdog_interval
from edge.tracker import Tracker
from edge.types import Decision, Frame, FrameResult

if TYPE_CHECKING:
    from edge.config import Config
    from edge.door import DoorController
    from edge.gallery import Gallery

log = logging.getLogger("facegate.daemon")

# How long one wait for a frame may block: bounds the reaction time to the
# stop event, to reload requests and to watchdog pings.
FRAME_WAIT_S = 0.2
# How often the fps figure, systemd's STATUS= line and the publisher's copy of
# the state are refreshed (the publisher sends it once per mqtt.state_interval_s).
STATUS_EVERY_S = 5.0


class PublisherLike(Protocol):
    """What the daemon needs from :class:`edge.mqtt.Publisher` (and its fake)."""

    on_command: Callable[[str], None] | None

    def start(self) -> None: ...

    def publish_decision(self, decision: Decision) -> dict[str, Any]: ...

    def set_state(self, **fields: Any) -> None: ...

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None: ...

    def set_presence(self, present: bool) -> None: ...

    def set_ready(self) -> None: ...

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]: ...

    def publish_status(self, name: str, fields: dict[str, Any]) -> None: ...

    def alive(self) -> bool: ...

    def stop(self, timeout: float) -> None: ...


class RecognizerLike(Protocol):
    """What the daemon needs from :class:`edge.recognizer.Recognizer`."""

    @property
    def gallery(self) -> Gallery: ...

    @property
    def model_sha256(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    def set_gallery(self, gallery: Gallery) -> None: ...

    def process(self, frame: Frame) -> FrameResult: ...


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


class StdoutPublisher:
    """Each event payload as one JSON line on stdout (or ``out``).

    The publisher when MQTT is off; with ``inner`` (a real :class:`edge.mqtt.Publisher`)
    it prints and publishes, as ``facegate demo --broker`` does.
    """

    def __init__(self, cfg: Config, out: Any = None, inner: PublisherLike | None = None) -> None:
        from edge.mqtt import FakePublisher

        self._fake: Any = inner if inner is not None else FakePublisher(cfg)
        self._out = out

    @property
    def on_command(self) -> Callable[[str], None] | None:
        return self._fake.on_command  # type: ignore[no-any-return]

    @on_command.setter
    def on_command(self, fn: Callable[[str], None] | None) -> None:
        # Commands arrive through the wrapped publisher: hand it the callback.
        self._fake.on_command = fn

    def start(self) -> None:
        self._fake.start()

    def publish_decision(self, decision: Decision) -> dict[str, Any]:
        payload: dict[str, Any] = self._fake.publish_decision(decision)
        from edge.events import encode

        out = self._out or sys.stdout
        out.write(encode(payload).decode() + "\n")
        out.flush()
        return payload

    def set_state(self, **fields: Any) -> None:
        self._fake.set_state(**fields)

    def set_gallery(self, names: list[str] | tuple[str, ...]) -> None:
        self._fake.set_gallery(names)

    def set_presence(self, present: bool) -> None:
        self._fake.set_presence(present)

    def set_ready(self) -> None:
        self._fake.set_ready()

    @property
    def on_unlock(self) -> Callable[[bytes], None] | None:
        return getattr(self._fake, "on_unlock", None)

    @on_unlock.setter
    def on_unlock(self, fn: Callable[[bytes], None] | None) -> None:
        self._fake.on_unlock = fn

    def publish_event(
        self, kind: str, fields: dict[str, Any], ts: float | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = self._fake.publish_event(kind, fields, ts)
        from edge.events import encode

        out = self._out or sys.stdout
        out.write(encode(payload).decode() + "\n")
        out.flush()
        return payload

    def publish_status(self, name: str, fields: dict[str, Any]) -> None:
        self._fake.publish_status(name, fields)

    def alive(self) -> bool:
        return bool(self._fake.alive())

    def stop(self, timeout: float) -> None:
        self._fake.stop(timeout)


def make_publisher(cfg: Config) -> PublisherLike:
    """The real MQTT publisher when ``mqtt.enabled``, else JSON lines on stdout."""
    if cfg.mqtt.enabled:
        from edge.mqtt import Publisher

        pub: PublisherLike = Publisher(cfg)
        return pub
    return StdoutPublisher(cfg)


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
) -> int:
    """Run the service until ``stop`` is set or a finite replay ends; the exit status.

    0: stopped on request or replay finished; 1: the frame source or the loop
    failed at runtime (systemd restarts us). Start-up problems (bad model,
    gallery, camera) raise :class:`FacegateError`.
    """
    from edge.gallery import reload_for_config

    notifier = notifier or Notifier()
    reload = reload or threading.Event()
    budget = cfg.service.stop_timeout_s
    started = time.monotonic()
    pub = publisher or make_publisher(cfg)
    # door: built (relay released) before anything else starts; it gets every
    # decision in-process from this loop, never from the broker or the outbox.
    door = _door(cfg, pub, door_factory) if cfg.door.enabled else None
    cap_stop = threading.Event()
    cap: CaptureLike | None = None
    rc = 0
    notifier.status("starting")
    pub.start()
    try:
        rec = recognizer
        if rec is None:
            from edge.recognizer import Recognizer

            # This also opens the gallery: a bad one fails start-up, before READY.
            rec = Recognizer.from_config(cfg)
        model_sha = rec.model_sha256

        def on_command(cmd: str) -> None:
            # Called on the MQTT thread: only flag it, the loop does the work.
            if cmd == "reload-gallery":
                reload.set()

        pub.on_command = on_command
        if door is not None:  # door: the signed remote unlock (refused unless enabled)
            pub.on_unlock = door.remote_command  # type: ignore[attr-defined]
        # A face that jumps identity by more than the open-set threshold is
        # someone else: it ends its track (edge.tracker.identity_jump).
        tracker = Tracker(cfg.decision, identity_threshold=rec.threshold)
        cap = capture_factory(cfg, cap_stop)
        cap.start()
        health = _Health(notifier, pub, watchdog_interval())
        log.info(
            "started: device=%s source=%s gallery=%d people model=%s threshold=%.3f",
            cfg.device.id,
            cfg.camera.source,
            len(rec.gallery),
            model_sha[:12],
            rec.threshold,
        )
        frames = events = 0
        fps = 0.0
        window_start, window_frames = time.monotonic(), 0
        ready = present = False

        def publish_state(now: float) -> None:
            assert cap is not None and rec is not None
            pub.set_state(
                status="running",
                fps=round(fps, 2),
                frames=frames,
                dropped=cap.dropped,
                events=events,
                gallery_size=len(rec.gallery),
                uptime_s=round(now - started, 1),
                model_sha256=model_sha,
            )

        while not stop.is_set():
            if reload.is_set():
                reload.clear()
                if door is not None:  # door: fail-secure on reload
                    door.release("reload")
                try:
                    rec.set_gallery(reload_for_config(cfg, rec.gallery))
                    log.info("gallery reloaded: %d people", len(rec.gallery))
                    # The open-set threshold follows the gallery size: so does
                    # the identity check of the tracks.
                    tracker.identity_threshold = rec.threshold
                    publish_state(time.monotonic())
                    pub.set_gallery(rec.gallery.names)  # re-announced, state sent now
                except FacegateError as e:
                    log.error("gallery reload failed, keeping the old one: %s", e)
            frame = cap.get(timeout=FRAME_WAIT_S)
            if frame is None:
                if cap.finished:
                    log.info("replay finished after %d frames, %d events", frames, events)
                    break
                if not cap.alive:
                    log.error("frame source stopped delivering frames")
                    rc = 1
                    break
            else:
                result = rec.process(frame)
                if not ready:
                    # Models loaded and the camera delivered: only now "online",
                    # before this frame's decisions go out.
                    ready = True
                    publish_state(time.monotonic())
                    pub.set_gallery(rec.gallery.names)
                    pub.set_ready()
                    notifier.ready(f"running, {len(rec.gallery)} people enrolled")
                    log.info("ready: first frame processed")
                snapshot = frame.image if cfg.mqtt.snapshot else None
                for d in tracker.update(result, snapshot):
                    if door is not None:  # door: every decision, live from the tracker
                        door.on_decision(d, rec.gallery)
                    payload = pub.publish_decision(d)
                    events += 1
                    log.info("%s", _event_line(d, payload))
                frames += 1
                window_frames += 1
                health.frame_done()
                if (tracker.active_tracks > 0) != present:
                    present = not present
                    pub.set_presence(present)
            if door is not None and not door.alive():  # door: relay owner died: restart
                log.error("door controller stopped; exiting for a restart")
                rc = 1
                break
            health.tick()
            now = time.monotonic()
            if now - window_start >= STATUS_EVERY_S:
                fps = window_frames / (now - window_start)
                window_start, window_frames = now, 0
                notifier.status(f"{fps:.1f} fps, {frames} frames, {events} events")
                publish_state(now)
    except FacegateError:
        raise
    except Exception:
        log.exception("service loop failed")
        rc = 1
    finally:
        if door is not None:  # door: released first, before anything else stops
            door.stop(timeout=min(2.0, budget * 0.2), why="service stopping")
        notifier.stopping("stopping")
        t_stop = time.monotonic()
        # Reverse start order: capture first (no new frames), then the publisher
        # (which flushes what it can and keeps the rest in its outbox).
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
    return rc


def _door(
    cfg: Config,
    pub: PublisherLike,
    factory: Callable[[Config, PublisherLike], DoorController] | None,
) -> DoorController:
    if factory is not None:
        return factory(cfg, pub)
    from edge.door import make_door

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
