"""onnx-cam: class-activation maps for CNNs, computed on the model's ONNX graph."""
