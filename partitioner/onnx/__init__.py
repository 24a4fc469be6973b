"""ONNX: one file per partition plus a manifest for vendor toolchains, and the chained ONNX Runtime run that
proves the files compute the model.
"""
