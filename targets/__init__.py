"""Target devices as data: the spec schema, its loader and validation, built-in specs."""

from targets.loader import (
    DEFAULT_TARGET_NAMES,
    builtin_target_names,
    load_target,
    load_targets,
)
from targets.spec import Link, OpLimit, SupportRules, Target, TargetSet

__all__ = [
    "DEFAULT_TARGET_NAMES",
    "Link",
    "OpLimit",
    "SupportRules",
    "Target",
    "TargetSet",
    "builtin_target_names",
    "load_target",
    "load_targets",
]
