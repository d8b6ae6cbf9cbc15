"""The per-face stages the bench measures beside its built-in ones (liveness).

A per-face stage (liveness, say) lives in its own module of this package,
built on :class:`tools.bench.stages.FaceStage` and
:class:`~tools.bench.stages.StageContext`; an instance of it is listed here.
The run (:mod:`tools.bench.cli`) measures each for every embedder, runtime and
thread count, and the report (:mod:`tools.bench.report`) gives each a row
titled by its ``title`` and a key in ``bench.json``'s ``extra``. This registry
is its own module so that a stage's module imports :mod:`tools.bench.stages`
without a circle.
"""

from __future__ import annotations

from tools.bench.liveness import LivenessCost
from tools.bench.stages import FaceStage

# In table order.
FACE_STAGES: tuple[FaceStage, ...] = (LivenessCost(),)
