"""Identity: embeddings become matches against the enrolled people.

The stage after :mod:`edge.vision` (whose manifests carry the embedder's
calibration) and before :mod:`edge.decide`. In import order:

* :mod:`~edge.identity.thresholds`: the open-set threshold that follows the
  gallery size, pure functions over the calibration's rate tables;
* :mod:`~edge.identity.gallery`: the enrolled people, bound to one embedder
  manifest, encrypted at rest;
* :mod:`~edge.identity.matcher`: the open-set rule (nearest person, threshold, margin);
* :mod:`~edge.identity.enrol`: photo quality and the enrolment plan.
"""
