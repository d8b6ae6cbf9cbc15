"""Offline tools for facegate, run from a checkout as ``python -m tools.X``.

They may import :mod:`edge` (the device package); ``edge`` never imports them.
Heavy dependencies (TensorFlow, tqdm, matplotlib) are imported inside the
functions that need them, so importing a tool module stays cheap.
"""
