"""Liveness evaluation: generated presentation attacks, real clips, APCER/BPCER reports."""
