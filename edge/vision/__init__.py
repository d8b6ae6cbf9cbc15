"""Vision: a frame becomes embeddings (frame -> boxes + landmarks -> aligned crops -> embeddings).

The stage after :mod:`edge.sources` and before :mod:`edge.identity`; it
imports neither identity, decisions, delivery nor the door. In import order:

* :mod:`~edge.vision.manifest`: the JSON that travels with every model
  (input spec, preprocessing, sha256, and the embedder's calibration with its
  rate tables); a model that disagrees with its manifest is refused;
* :mod:`~edge.vision.runtime`: the TFLite interpreters (``ai_edge_litert``,
  ``tflite_runtime``) and the Edge TPU delegate, imported lazily;
* :mod:`~edge.vision.detector`: BlazeFace, anchors and weighted NMS in numpy;
* :mod:`~edge.vision.align`: the similarity transform onto the model's template;
* :mod:`~edge.vision.embedder`: the int8 embedder (SFace by default).

Image files are read by :mod:`edge.imageio`, below every stage, because the
frame sources read them too.
"""
