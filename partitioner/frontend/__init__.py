"""Front end: from a model and example inputs to the op graph the placement passes read.

capture (torch.export) -> annotate (op keys, shapes, dtypes, FLOPs, bytes, in-place writes).
"""
