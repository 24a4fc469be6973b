"""The plan: a placement with everything needed to trust, re-score and rebuild it.

A `Plan` holds the model's identity and source, the targets, the per-node
facts and refusals, the placement problem it was solved on (cost table,
tensors, links, prices, memory), the placement, the solver's report and the
baselines' scores. It saves as versioned JSON that `Plan.load` round-trips.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from partitioner.errors import PartitionerError
from partitioner.execution.partition_compilers import CompilerRefusal
from partitioner.execution.partitioned_module import PartitionedModule, build_partitioned_module, resolve_devices
from partitioner.execution.split import Partition
from partitioner.fields import FieldError, entries, number, part, records, text, texts
from partitioner.files import PLAN, check_schema_version, read_json, write_json
from partitioner.frontend.capture import (CapturedModel, ModelSource, capture, load_model_file, load_model_source,
                                          planned_with_weights)
from partitioner.frontend.op_graph import annotate
from partitioner.llm.deployment import LLM_PLAN_KIND
from partitioner.placement.objectives import Objective, objective_named
from partitioner.placement.problem import PlacementProblem
from partitioner.placement.scoring import Score, score
from partitioner.placement.pins import Pin
from partitioner.placement.solver import SolverReport
from partitioner.plan_checks import plan_inconsistency
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
        """This plan with its model rebuilt from `spec` (file.py[:function], .pt2 or a model folder), e.g. after it
        moved; a folder is given the input sizes the plan was compiled with."""
        source = ModelSource.parse(spec)
        if source.kind == "folder" and self.model.source is not None:
            source = replace(source, inputs=self.model.source.inputs)
        return replace(self, model=replace(self.model, source=source), captured=None)

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
        captured = load_model_source(self.model.source)
        if self.model.source.kind == "folder" and annotate(captured.program).fingerprint() != self.model.fingerprint:
            captured = self._planned_folder_graph(captured)
        return self._checked(captured)

    def _planned_folder_graph(self, weighted: CapturedModel) -> CapturedModel:
        """A model folder's graph as planned (on the meta device) with the weights of its capture on the CPU,
        where those differ only in layout; one error where the model's code takes another path on each device."""
        planned = load_model_file(self.model.source.path, self.model.source.inputs, weights=False)
        if annotate(planned.program).fingerprint() != self.model.fingerprint:
            return planned  # the folder changed since: _checked says so
        joined = planned_with_weights(planned, weighted)
        if joined is None:
            raise PartitionerError(
                f"{weighted.name}'s code takes another path with its weights on the CPU than on the meta device it "
                "was planned on (its graph computes other ops here), so the plan's graph cannot run here. Fix: run "
                "it on the devices it was planned for, or plan it from a .py whose build() makes it with weights "
                "on this machine's device.")
        return joined

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
        """The plan `data` holds, every field checked as it is read and the whole checked against itself
        (partitioner/plan_checks.py); anything edited or damaged is a PartitionerError naming it."""
        return _checked_plan(data)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON; the file appears complete or not at all."""
        path = Path(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """The plan in the file `path`, read within a bound (partitioner/files.py) and checked as `from_dict`
        checks it."""
        return _checked_plan(read_json(path, PLAN), str(path))


def is_llm_plan(data: Any) -> bool:
    """Whether `data` (a plan file's JSON) is an LLM serving plan, which compile --workload writes."""
    if not isinstance(data, Mapping):
        return False
    return data.get("kind") == LLM_PLAN_KIND or {"workload", "best", "tried"} <= data.keys()  # or an earlier one's


def _checked_plan(data: Any, source: str | None = None) -> Plan:
    """The plan in `data` (read from the file `source`, if any), or a PartitionerError that names the field that
    is not right, or says what in the plan contradicts the rest."""
    if not isinstance(data, Mapping):
        raise PartitionerError(f"{f'{source} is' if source else 'this is'} not a plan file: a plan holds a JSON "
                               f"object, not a JSON {type(data).__name__}. Fix: give the plan.json that compile wrote.")
    version = data.get("schema_version")
    if is_llm_plan(data):
        raise PartitionerError(f"{source or 'this'} is an LLM serving plan (written by compile --workload), not a "
                               "plan.json. Fix: read it with LLMPlan.load (partitioner.llm.deployment); report, "
                               "explain, run --check, export and serve read it as it is.")
    if version is None:
        raise PartitionerError(f"{source or 'this'} is not a plan: it has no schema_version (a plan file from before "
                               "versions, or another JSON file). Fix: give the plan.json that compile wrote, or "
                               "compile the model again with this version.")
    check_schema_version(version, SCHEMA_VERSION, "plan", "compile the model again with this version")
    try:
        plan, fallback = _read(data), text(data, "fallback", None)
    except FieldError as error:
        whose = f"{source} is not a valid plan file: its" if source else "the plan's"
        raise PartitionerError(f"{whose} {error}. Fix: compile the model again (the file was edited or "
                               "damaged).") from None
    problem = plan_inconsistency(plan)
    if problem is None and fallback not in (None, plan.fallback):  # to_dict writes the problem's beside it
        problem = f"its fallback {fallback!r} is not its problem's fallback {plan.fallback!r}"
    if problem is not None:
        raise PartitionerError(f"the plan is inconsistent with its own problem data: {problem}. Fix: compile "
                               "the model again (the file was edited or damaged).")
    return plan


def _read(data: Mapping) -> Plan:
    """The plan's parts, each read by its own `from_dict` (whose FieldErrors name the field's path)."""
    baselines = entries(data, "baselines", lambda table, name: part(table, name, lambda entry: entries(
        entry, "placement", text)))
    return Plan(
        model=part(data, "model", ModelInfo.from_dict),
        targets=records(data, "targets", TargetRecord.from_dict),
        objective=_known_objective(text(data, "objective")),
        cost_model=text(data, "cost_model"),
        problem=part(data, "problem", PlacementProblem.from_dict),
        nodes=records(data, "nodes", NodeRecord.from_dict),
        placement=entries(data, "placement", text),
        solver=part(data, "solver", SolverReport.from_dict),
        baselines=baselines,
        partitions=records(data, "partitions", Partition.from_dict),
        max_latency_seconds=number(data, "max_latency_seconds", None, above=True),
        order=texts(data, "order", ()),
        min_throughput=number(data, "min_throughput", None, above=True),
        fleet=text(data, "fleet", None),
        pins=records(data, "pins", Pin.from_dict, ()),
        compiler_refusals=records(data, "compiler_refusals", CompilerRefusal.from_dict, ()),
    )


def _known_objective(name: str) -> Objective:
    try:
        return objective_named(name)
    except PartitionerError:
        raise PartitionerError(f"this plan was solved for the objective {name!r}, which is not registered here. "
                               "Fix: register it (partitioner.register_objective) before loading the plan, upgrade "
                               "partitioner if it is a built-in of a newer version, or compile the model again.") from None
