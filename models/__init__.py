"""The workload: built-in ONNX decoder LMs of real shapes, loaders for user exports, generation."""
