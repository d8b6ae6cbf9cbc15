"""Unknown-visitor review and enrolment while the service runs (off by default).

* :mod:`~edge.review.cluster`: recurring strangers as one entry;
* :mod:`~edge.review.ring`: the encrypted, bounded, crash-safe ring of
  unknown visits on disk;
* :mod:`~edge.review.watch`: what the daemon hands each frame's decisions
  to: it keeps unknown visits in the ring (``review.keep_unknown``), and runs
  "enrol the next face as N" (``review.enrol_command``).

Both watch the decision flow from beside it; the daemon's loop hands every
watcher the same thing and knows nothing of what they do.
"""
