"""What runs inside a function. Copied into every archive: stdlib, numpy and onnxruntime only."""
