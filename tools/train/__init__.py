"""Fine-tune a face embedder with the triplet loss, then ship it to the device.

``python -m tools.train PEOPLE [--model sface|facenet|FILE] [--quantize --calibrate]``

``PEOPLE`` is ``<folder>/<Person>/<photo>``. Every photo goes through the
device's own detector and alignment; the people (never the photos of one
person) are split into training, validation and test people with a
recorded seed. Batches of P people x K photos (flipped, shifted, re-lit)
train the last ``--trainable-blocks`` blocks with FaceNet's triplet loss on
L2-normalised embeddings and online semi-hard negative mining
(``--mining batch-all`` as the alternative), under a warm-up + cosine
learning rate, with checkpoints (``--resume``) and early stopping on the
validation people's TAR at FAR 1e-3. The output is ``<name>.keras``, a
SavedModel, and with ``--quantize`` the float32/int8 TFLite models with
manifests (:mod:`tools.quantize`), with ``--calibrate`` calibrated on the
held-aside people (:mod:`tools.calibrate`). ``training_report.md``/``.json``
and two PNGs give the loss and active-triplet curves and the test people's
TAR at FAR 1e-3/1e-4 and FNIR at FPIR 1% before and after.
``docs/training.md`` explains the loss and how to read the numbers.

Modules: :mod:`~tools.train.loss` (the loss and the mining),
:mod:`~tools.train.data` (photos, split, crops, batches, augmentation),
:mod:`~tools.train.model` (starting models, blocks, export),
:mod:`~tools.train.metrics` (held-aside numbers), :mod:`~tools.train.loop`
(the loop, LR, checkpoints), :mod:`~tools.train.report` and
:mod:`~tools.train.cli`.
"""

from __future__ import annotations

from tools.train.cli import TrainConfig, build_parser, config_from_args, main, run

__all__ = ["TrainConfig", "build_parser", "config_from_args", "main", "run"]
