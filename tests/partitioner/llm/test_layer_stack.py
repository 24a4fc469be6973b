"""A stack of identical layers captured once: a shallow twin's graphs grown to the model's depth equal a full
capture, node for node; layers that differ are captured in full; the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, MixtralConfig

from partitioner.frontend.op_graph import OpGraph
from partitioner.llm import layer_stack
from partitioner.llm.experts import experts_sharded
from partitioner.llm.phases import capture_phases, capture_phases_in_full

PROMPTS, BATCHES, CONTEXT = [16, 32], [1, 4], 64
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
             max_position_embeddings=256)


def meta_model(config):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def wiring(graph: OpGraph) -> list[tuple]:
    """Each node's facts with every node it names given by position, so copies' names do not count. A batch size
    read off a cache is left out: torch.export reads it off one layer's cache, which layer varying with the depth."""
    position = {node.name: index for index, node in enumerate(graph)}

    def at(name):
        return position.get(name, name)

    return [(node.op, node.kind, node.module_path, node.output_tensors, node.flops, node.unread_bytes,
             node.unwritten_bytes, node.arguments, tuple(map(at, node.inputs)), at(node.writes),
             None if node.op.startswith("aten.sym_size") else node.parameters,
             sorted(at(name) for name in node.after if not name.startswith("sym_size")))
            for node in graph]


@pytest.mark.parametrize(("config", "expert_shards"), [
    (LlamaConfig(num_hidden_layers=7, **SMALL), 1),
    # Each layer's experts in two shards; 17 s on 2 cores, so run with -m slow (experts in shards are captured and
    # planned in the suite by test_llm_serving and test_llm_phases).
    pytest.param(MixtralConfig(num_hidden_layers=7, num_local_experts=4, **SMALL), 2, marks=pytest.mark.slow),
], ids=["llama", "mixtral"])
def test_a_grown_capture_equals_the_full_capture_node_for_node(config, expert_shards):
    model = meta_model(config)

    with experts_sharded(model, expert_shards):
        grown = capture_phases(model, PROMPTS, BATCHES, CONTEXT)
        full = capture_phases_in_full(model, PROMPTS, BATCHES, CONTEXT)

    for grown_phase, full_phase in zip(grown, full):
        assert grown_phase.state == full_phase.state
        for size, graph in grown_phase.graphs.items():
            expected = full_phase.graphs[size]
            assert wiring(graph) == wiring(expected)
            assert graph.parameter_bytes == expected.parameter_bytes
            assert graph.written_state == expected.written_state
            assert [graph.nodes.index(graph[name]) for name in graph.outputs] == \
                [expected.nodes.index(expected[name]) for name in expected.outputs]
    assert any(node.name.endswith("_layer5") for node in grown[1].graphs[4])  # it was grown, not captured in full


def test_layers_the_config_sets_apart_are_captured_in_full():
    alternating = meta_model(Gemma2Config(num_hidden_layers=7, head_dim=16, **SMALL))  # sliding and global layers

    with layer_stack.shallow_twin(alternating) as stack:
        assert stack is None
        assert len(alternating.model.layers) == 7


def test_the_model_gets_its_layers_and_config_back_also_when_the_capture_fails():
    model = meta_model(LlamaConfig(num_hidden_layers=7, **SMALL))
    layers = model.model.layers

    with pytest.raises(RuntimeError), layer_stack.shallow_twin(model) as stack:
        assert stack == layer_stack.LayerStack("model.layers", 7)
        assert len(model.model.layers) == model.config.num_hidden_layers == layer_stack.KEPT_LAYERS
        raise RuntimeError("the capture failed")

    assert model.model.layers is layers and model.config.num_hidden_layers == 7
