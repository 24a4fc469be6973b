"""Op classes: groups of ops that reach similar fractions of a device's peak, for per-class roofline constants.

A spec may give each class its own efficiencies and launch overhead
(`[op_classes.matmul]`), which `partitioner calibrate` fits from a profile;
ops of a class without its own table use the spec's top-level figures.
"""

from __future__ import annotations

OP_CLASSES = ("matmul", "convolution", "attention", "normalization", "reduction", "elementwise")

_CLASS_OF_NAME = {
    **dict.fromkeys(("linear", "mm", "bmm", "matmul", "addmm", "baddbmm", "addmv", "mv", "dot"), "matmul"),
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d"), "convolution"),
    **dict.fromkeys(("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
                     "_scaled_dot_product_efficient_attention"), "attention"),
    **dict.fromkeys(("layer_norm", "native_layer_norm", "batch_norm", "native_batch_norm", "group_norm",
                     "native_group_norm", "rms_norm", "_native_batch_norm_legit_no_training",
                     "_native_batch_norm_legit"), "normalization"),
    **dict.fromkeys(("sum", "mean", "amax", "amin", "max", "min", "softmax", "_softmax", "log_softmax",
                     "_log_softmax", "var", "std", "var_mean", "argmax", "argmin", "cumsum", "max_pool2d",
                     "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d_with_indices"), "reduction"),
}


def op_class(op_key: str) -> str:
    """The class of an op key such as "aten.linear.default"; anything unlisted is elementwise work."""
    parts = op_key.split(".")
    name = parts[1] if len(parts) > 2 else parts[-1]
    return _CLASS_OF_NAME.get(name.rstrip("_"), "elementwise")
