"""Fails to load on purpose, as a model whose weights are missing would."""

import tms_server


class Model(tms_server.Model):
    def __init__(self):
        raise RuntimeError("weights not found: unloadable.onnx")
