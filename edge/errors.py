"""The one error hierarchy of facegate.

Every error a user can cause (bad config, bad image, wrong model, corrupt
gallery, unreachable broker) is a :class:`FacegateError`. The CLI maps it to a
one-line message and a non-zero exit code; anything else is a bug and keeps
its traceback.
"""


class FacegateError(Exception):
    """Base class: a problem with the input or environment, not a bug."""

    exit_code = 2


class ConfigError(FacegateError):
    """The TOML config is invalid; the message names the key path."""


class ModelError(FacegateError):
    """A model or its manifest is missing, corrupt or inconsistent."""


class ManifestMismatch(ModelError):
    """A model disagrees with its manifest (hash, input shape or dtype)."""


class RuntimeUnavailable(ModelError):
    """No TFLite runtime (ai_edge_litert / tflite_runtime) can be imported."""


class ImageError(FacegateError):
    """An image cannot be read, is not an image, or is too large."""


class NoFaceError(FacegateError):
    """An image holds no usable face (or more than one where one is needed)."""


class GalleryError(FacegateError):
    """The gallery is missing, corrupt, tampered with, or made by another model."""


class SourceError(FacegateError):
    """A frame source cannot be opened or has stopped delivering frames."""


class SignatureError(FacegateError):
    """A signed event's signature is missing, malformed or wrong.

    Raised by :func:`edge.delivery.signing.verify_payload`.
    """


class BrokerError(FacegateError):
    """The MQTT broker cannot be reached or refused us."""


class ReviewError(FacegateError):
    """The unknown-visitor review ring cannot be used: no key, unreadable folder, no such entry."""


class FleetError(FacegateError):
    """A gallery bundle cannot be built, verified, stored or published (:mod:`edge.fleet`)."""
