"""partitioner: place the operators of a PyTorch model on heterogeneous accelerators.

    plan = partitioner.compile(model, example_inputs, targets=["npu-example", "cuda-h100"])
    plan.save("plan.json"); print(plan.summary())

Names are loaded on first use, so that `targets` and `cost_models` can import
`partitioner.errors` without pulling in the whole pipeline.
"""

from importlib import import_module

_EXPORTS = {
    "backend": "partitioner.execution.torch_compile_backend",
    "compile": "partitioner.compiler",
    "compile_captured": "partitioner.compiler",
    "capture": "partitioner.frontend.capture",
    "load_model_file": "partitioner.frontend.capture",
    "FolderInputs": "partitioner.frontend.model_folder",
    "build_model_folder": "partitioner.frontend.model_folder",
    "Plan": "partitioner.plan",
    "Objective": "partitioner.placement.objectives",
    "BusySecondsObjective": "partitioner.placement.objectives",
    "register_objective": "partitioner.placement.objectives",
    "PartitionerError": "partitioner.errors",
    "load_targets": "targets.loader",
    "deploy_on_ray": "partitioner.deploy.ray_engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'partitioner' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
