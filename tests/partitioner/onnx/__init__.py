"""Tests of partitioner.onnx."""
