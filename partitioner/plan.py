"""The plan: a placement with everything needed to trust, re-score and rebuild it.

A `Plan` holds the model's identity and source, the targets, the per-node
facts and refusals, the placement problem it was solved on (cost table,
tensors, links, prices, memory), the placement, the solver's report and the
baselines' scores. It saves as versioned JSON that `Plan.load` round-trips.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from partitioner.errors import PartitionerError
from partitioner.execution.partition_compilers import CompilerRefusal
from partitioner.execution.partitioned_module import PartitionedModule, build_partitioned_module, resolve_devices
from partitioner.execution.split import Partition
from partitioner.files import write_atomically
from partitioner.frontend.capture import CapturedModel, ModelSource, capture, load_model_source
from partitioner.frontend.op_graph import annotate
from partitioner.placement.objectives import Objective, objective_named
from partitioner.placement.problem import PlacementProblem
from partitioner.placement.scoring import Score, score
from partitioner.placement.pins import Pin
from partitioner.placement.solver import SolverReport
from partitioner.plan_records import ModelInfo, NodeRecord, TargetRecord
from partitioner.reporting.summary import format_summary

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """A solved placement of one model on one target set."""

    model: ModelInfo
    targets: tuple[TargetRecord, ...]
    objective: Objective
    cost_model: str
    problem: PlacementProblem
    nodes: tuple[NodeRecord, ...]
    placement: Mapping[str, str]
    solver: SolverReport
    baselines: Mapping[str, Mapping[str, str]]
    partitions: tuple[Partition, ...]
    max_latency_seconds: float | None = None
    order: tuple[str, ...] = ()
    min_throughput: float | None = None  # requests per second the plan must serve (serving model)
    fleet: str | None = None  # the fleet's description, when planned on one (targets are then its devices)
    pins: tuple[Pin, ...] = ()  # the user's pins and forbids, already in the problem's supports
    # What targets' compilers refused while planning; the problem's supports already leave those ops out there.
    compiler_refusals: tuple[CompilerRefusal, ...] = ()
    captured: CapturedModel | None = field(default=None, compare=False, repr=False)

    @property
    def fallback(self) -> str:
        return self.problem.fallback

    def module(self, device_map: Mapping[str, str] | None = None) -> PartitionedModule:
        """The model as placed, runnable: one submodule per partition, each on its target's device.

        `device_map` says which torch device runs each target (e.g. {"npu-example": "cpu",
        "cuda-h100": "cuda:0"}); targets without a device here are emulated on the CPU.
        """
        devices = resolve_devices({t.name: t.torch_device for t in self.targets}, device_map)
        return build_partitioned_module(self.captured_model().program, self.partitions, devices)

    def with_model(self, model: Any, example_inputs: Any) -> Plan:
        """This plan bound to `model`, after checking it is the model the plan was compiled for."""
        return replace(self, captured=self._checked(capture(model, example_inputs, name=self.model.name)))

    def with_source(self, spec: str) -> Plan:
        """This plan with its model rebuilt from `spec` (file.py[:function] or .pt2), e.g. after the file moved."""
        return replace(self, model=replace(self.model, source=ModelSource.parse(spec)), captured=None)

    def captured_model(self) -> CapturedModel:
        """The captured model: kept from `compile`, or captured again from the recorded source."""
        if self.captured is not None:
            return self.captured
        if self.model.source is None:
            raise PartitionerError(
                "this plan does not record where its model came from (it was compiled from a Python object). "
                "Fix: bind the model with plan.with_model(model, example_inputs)."
            )
        if not Path(self.model.source.path).exists():
            raise PartitionerError(f"the plan's model source {self.model.source.path!r} does not exist. Fix: give "
                                   "the model's new place with --model (plan.with_source in Python).")
        return self._checked(load_model_source(self.model.source))

    def _checked(self, captured: CapturedModel) -> CapturedModel:
        fingerprint = annotate(captured.program).fingerprint()
        if fingerprint != self.model.fingerprint:
            raise PartitionerError(
                f"the model {captured.name} no longer matches this plan (graph fingerprint {fingerprint}, plan "
                f"{self.model.fingerprint}): its code, configuration or input shapes changed. Fix: compile again."
            )
        return captured

    def score(self) -> Score:
        """The plan's latency, money and memory, re-scored from the stored problem."""
        return score(self.problem, self.placement, self.order or None)

    def baseline_scores(self) -> dict[str, Score]:
        return {name: score(self.problem, assignment) for name, assignment in self.baselines.items()}

    def summary(self) -> str:
        """A short human-readable report: where the model went and what it costs against the baselines."""
        return format_summary(self)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model.to_dict(),
            "targets": [t.to_dict() for t in self.targets],
            "fallback": self.fallback,
            "objective": self.objective.name,
            "max_latency_seconds": self.max_latency_seconds,
            **({"min_throughput": self.min_throughput} if self.min_throughput is not None else {}),
            **({"fleet": self.fleet} if self.fleet is not None else {}),
            **({"pins": [pin.to_dict() for pin in self.pins]} if self.pins else {}),
            **({"compiler_refusals": [refusal.to_dict() for refusal in self.compiler_refusals]}
               if self.compiler_refusals else {}),
            "cost_model": self.cost_model,
            "solver": self.solver.to_dict(),
            "score": self.score().to_dict(),
            "baselines": {
                name: {"score": result.to_dict(), "placement": dict(self.baselines[name])}
                for name, result in self.baseline_scores().items()
            },
            "placement": dict(self.placement),
            "order": list(self.order),
            "partitions": [p.to_dict() for p in self.partitions],
            "nodes": [n.to_dict() for n in self.nodes],
            "problem": self.problem.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Plan:
        version = data.get("schema_version")
        if version is None:
            raise PartitionerError("this plan has no schema_version (an early plan file, or not a plan). Fix: "
                                   "compile the model again with this version.")
        if version != SCHEMA_VERSION:
            newer = isinstance(version, int) and version > SCHEMA_VERSION
            fix = "upgrade partitioner" if newer else "compile the model again with this version"
            raise PartitionerError(f"plan schema version {version!r} is not {SCHEMA_VERSION}. Fix: {fix}.")
        plan = cls(
            model=ModelInfo.from_dict(data["model"]),
            targets=tuple(TargetRecord(**t) for t in data["targets"]),
            objective=_known_objective(data["objective"]),
            cost_model=data["cost_model"],
            problem=PlacementProblem.from_dict(data["problem"]),
            nodes=tuple(NodeRecord.from_dict(n) for n in data["nodes"]),
            placement=dict(data["placement"]),
            solver=SolverReport.from_dict(data["solver"]),
            baselines={name: dict(entry["placement"]) for name, entry in data["baselines"].items()},
            partitions=tuple(Partition.from_dict(p) for p in data["partitions"]),
            max_latency_seconds=data.get("max_latency_seconds"),
            order=tuple(data.get("order", ())),
            min_throughput=data.get("min_throughput"),
            fleet=data.get("fleet"),
            pins=tuple(Pin.from_dict(pin) for pin in data.get("pins", ())),
            compiler_refusals=tuple(CompilerRefusal.from_dict(item) for item in data.get("compiler_refusals", ())),
        )
        problem = plan_inconsistency(plan)
        if problem is not None:
            raise PartitionerError(f"the plan is inconsistent with its own problem data: {problem}. Fix: compile "
                                   "the model again (the file was edited or damaged).")
        return plan

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON; the file appears complete or not at all."""
        path = Path(path)
        write_atomically(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PartitionerError(f"plan file {str(path)!r} does not exist. Fix: check the path.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PartitionerError(f"{path} is not a plan file (not JSON: {error}). Fix: give plan.json.") from None
        if not isinstance(data, dict):
            raise PartitionerError(f"{path} is not a plan file: a plan holds a JSON object, this file a JSON "
                                   f"{type(data).__name__}. Fix: give the plan.json that compile wrote.")
        try:
            return cls.from_dict(data)
        # AttributeError: a JSON array or string where an object belongs (`.get` on a list)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise PartitionerError(f"{path} is not a valid plan file (bad field {error}). Fix: compile again.") from None


def _known_objective(name: str) -> Objective:
    try:
        return objective_named(name)
    except PartitionerError:
        raise PartitionerError(f"this plan was solved for the objective {name!r}, which is not registered here. "
                               "Fix: register it (partitioner.register_objective) before loading the plan, upgrade "
                               "partitioner if it is a built-in of a newer version, or compile the model again.") from None


def plan_inconsistency(plan: Plan) -> str | None:
    """What in `plan` contradicts its own problem data (supports, follows, partitions, the solver's figures),
    or None: a plan file is checked once, on load, so no command acts on an edited or damaged one."""
    problem = plan.problem
    names = [node.name for node in problem.nodes]
    if [t.name for t in plan.targets] != list(problem.target_names):
        return "its targets differ from its problem's targets"
    if {record.name for record in plan.nodes} != set(names):
        return "its node records differ from its problem's nodes"
    for label, assignment in {"placement": plan.placement, **{f"baseline {n}": a for n, a in plan.baselines.items()}
                              }.items():
        reason = _assignment_inconsistency(problem, assignment)
        if reason is not None:
            return f"the {label} {reason}"
    home = {name: partition.index for partition in plan.partitions for name in partition.nodes}
    if sorted(home) != sorted(names) or sum(len(p.nodes) for p in plan.partitions) != len(names):
        return "its partitions do not hold every node exactly once"
    for index, partition in enumerate(plan.partitions):
        if partition.index != index or any(plan.placement[name] != partition.target for name in partition.nodes):
            return f"partition {partition.name} is out of order or not on the target of its nodes"
    backwards = next((value.producer for value in problem.values for consumer in value.consumers
                      if home[value.producer] > home[consumer]), None)
    if backwards is not None:
        return f"the value of {backwards} flows back to an earlier partition"
    if plan.order and sorted(plan.order) != sorted(names):
        return "its order does not list every node once"
    return _report_inconsistency(plan)


def _assignment_inconsistency(problem: PlacementProblem, assignment: Mapping[str, str]) -> str | None:
    if set(assignment) != {node.name for node in problem.nodes}:
        return "does not place every node exactly once"
    for node in problem.nodes:
        target = assignment[node.name]
        if target not in node.compute_seconds:
            known = target in problem.target_names
            return (f"puts {node.name} on {target}, which {'refuses it' if known else 'is not one of its targets'}")
        if node.follows is not None and target != assignment[node.follows]:
            return f"separates {node.name} from {node.follows}, which it must sit with"
    return None


def _report_inconsistency(plan: Plan) -> str | None:
    report = plan.solver
    if report.status not in ("OPTIMAL", "FEASIBLE"):
        return f"its solver status {report.status!r} is neither OPTIMAL nor FEASIBLE"
    if not 0 <= report.gap <= 1 or not 0 <= report.bound <= report.objective * (1 + 1e-9):
        return f"its solver gap {report.gap:g} or bound {report.bound:g} is impossible"
    rescored = plan.objective.value(plan.score())
    if abs(rescored - report.objective) > 1e-9 * max(abs(rescored), abs(report.objective), 1e-30):
        return (f"its solver objective {report.objective:g} is not what its placement scores on its cost table "
                f"({rescored:g})")
    return None
