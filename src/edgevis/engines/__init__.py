"""TensorRT engines: build (profiles, precision plans, plugins), cache + JSON sidecar, loading.

Only :mod:`edgevis.engines.build` and the TensorRT-facing halves of :mod:`.plugins` and
:mod:`.precision` import ``tensorrt``, lazily. Everything else (cache keys, sidecars, precision
plans, FP16/Q-DQ ONNX conversion, plugin library checks) runs and is tested on CPU.
"""
