"""edgevis: ONNX/TensorRT deployment of efficient video segmentation models."""
__version__ = "0.1.0"
