"""The supervised models: the shared-encoder / task-heads interface (``base``) and the
dense-vision models (``dense``, ``segnet_mtan``)."""
