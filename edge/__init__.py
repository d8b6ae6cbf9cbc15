"""facegate: offline face recognition for door-access devices.

The device side, one package per stage of the data flow, each importing only
earlier ones (``tests/test_architecture.py`` keeps it so; docs/architecture.md
draws it): frames (:mod:`edge.sources`) -> face boxes, landmarks, aligned
crops and embeddings (:mod:`edge.vision`) -> matches (:mod:`edge.identity`)
-> decisions (:mod:`edge.decide`) -> events (:mod:`edge.delivery`) and the
door (:mod:`edge.door`); Home Assistant (:mod:`edge.homeassistant`) watches
the MQTT publisher as an extension. Immutable dataclasses
(:mod:`edge.types`) carry the data between stages; :mod:`edge.config` reads
the TOML file; :mod:`edge.daemon` puts the service together and
:mod:`edge.cli` is the ``facegate`` command.

Importing this package does nothing: hardware backends (picamera2, TFLite
runtimes, the Edge TPU, MQTT, GPIO) are imported lazily where they are used.
"""

__version__ = "0.1.0"
