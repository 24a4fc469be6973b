"""Input containers torch.export must be taught to flatten: transformers' KV caches, before every capture.

A decode step takes its past keys and values in a cache object (`DynamicCache`,
`StaticCache`, `EncoderDecoderCache`, ...), which torch.export refuses unless the
type is registered as a pytree node. transformers ships those registrations;
`register_input_containers` applies them whenever transformers is loaded, so
a decode step captures like any other model.
"""

from __future__ import annotations

import sys

import torch


def register_input_containers(model: torch.nn.Module) -> None:
    """Register the cache types of transformers (and of `model`'s own module) as pytree nodes, once each."""
    if "transformers" not in sys.modules:
        return
    try:  # transformers 5: every Cache subclass, and the model's own *Cache classes
        from transformers.exporters.exporter_dynamo import register_cache_pytrees_for_model
    except ImportError:
        register_cache_pytrees_for_model = None
    if register_cache_pytrees_for_model is not None:
        register_cache_pytrees_for_model(model)
        return
    try:  # older releases: DynamicCache only
        from transformers.integrations.executorch import register_dynamic_cache_export_support
    except ImportError:
        return
    register_dynamic_cache_export_support()
