"""Reduced-precision variants of a model as ONNX: FP16 and INT8 (explicit Q/DQ), each verified.

TensorRT 11 builds only strongly typed networks, so precision is decided here, in the ONNX file,
not by builder flags on the GPU box. Everything in this package runs on a CPU-only machine and
needs the `onnx` package (the `train` extra) besides ONNX Runtime.
"""
