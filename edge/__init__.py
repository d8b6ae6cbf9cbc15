"""facegate: offline face recognition for door-access devices.

The device side. Data flows one way through immutable dataclasses
(:mod:`edge.types`): frame -> face boxes + landmarks -> aligned crops ->
embeddings -> matches -> decisions -> events.

Importing this package does nothing: hardware backends (picamera2, TFLite
runtimes, the Edge TPU, MQTT) are imported lazily where they are used.
"""

__version__ = "0.1.0"
