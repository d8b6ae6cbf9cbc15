"""Decide: frames become decisions.

The stage after :mod:`edge.vision` and :mod:`edge.identity`, and before the
consumers of decisions (:mod:`edge.delivery`, :mod:`edge.door`):

* :mod:`~edge.decide.recognizer`: one frame through detection, alignment,
  embedding and matching (frame -> :class:`edge.types.FrameResult`); enrolment,
  calibration, evaluation, benchmarks and the device all go through it;
* :mod:`~edge.decide.tracker`: faces tracked over frames, k of the last n
  agreeing, a cooldown per track (matches -> :class:`edge.types.Decision`).
"""
