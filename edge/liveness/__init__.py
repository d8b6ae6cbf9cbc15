"""Presentation-attack detection (liveness) per track: is the face a live head or a flat prop?

The stage (:class:`edge.liveness.stage.LivenessStage`) gathers evidence from
the frames the device already has: the face mesh (:mod:`edge.liveness.mesh`),
the motion of the texture in and around the face (:mod:`edge.liveness.motion`:
planar parallax, the prop's context), blinks (:mod:`edge.liveness.blink`),
and decides per track (:mod:`edge.liveness.decide`): passed ``True``,
``False`` or ``None`` (not enough evidence, never a pass). See
docs/liveness.md.
"""
