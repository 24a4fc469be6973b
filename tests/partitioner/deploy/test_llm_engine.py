"""An LLM plan served on Ray as tokens: one actor per device holding its partitions of both phases and the KV
caches it reads, each prompt prefilled where the plan places prefill, its cache handed to a decode batch where
the plan places decode; the tokens are the model's own greedy `generate`'s, and serving measures tokens per
second, TTFT and TPOT beside the plan's.

The tests share one local Ray instance whose four GPUs stand for the fleet's four devices (every actor runs on
the CPU).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

import partitioner
from partitioner.cli import main
from partitioner.deploy.llm_requests import jsonl_requests, workload_requests
from partitioner.errors import PartitionerError
from partitioner.execution.tensor_parallel import generate_as_member
from partitioner.llm.deployment import GroupCollectives, LLMPlan
from partitioner.llm.planning import plan_llm
from targets.fleet import load_fleet
from tests.partitioner.execution.test_llm_phases import WORKLOAD, small_gpt2
from tests.partitioner.execution.test_tensor_parallel_runs import fleet_of_copies
from tests.partitioner.llm.test_llm_serving import load_workload_text

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore:.*emulated on the CPU")
from partitioner.deploy.llm_engine import deploy_llm_on_ray  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def saved_plan(pipeline_plan, tmp_path_factory):
    """The small GPT-2's co-located plan over two devices, as a later command reads it."""
    model, plan = pipeline_plan
    return model, LLMPlan.load(plan.save(tmp_path_factory.mktemp("plan") / "llm_plan.json"))


def disaggregated(plan: LLMPlan) -> LLMPlan:
    """`plan` with its prefill moved to the fleet's other two devices: prefill and decode each on devices of their
    own, so every prompt's KV cache crosses from a prefill actor to a decode actor."""
    other = {"tiny.0": "tiny.2", "tiny.1": "tiny.3"}
    assignment = {node: other[place] if node.startswith("prefill/") else place
                  for node, place in plan.best.assignment.items()}
    devices = {"prefill": tuple(sorted({other[p] for p in plan.best.devices["prefill"]})),
               "decode": plan.best.devices["decode"]}
    return dataclasses.replace(plan, best=dataclasses.replace(plan.best, name="disaggregated", assignment=assignment,
                                                              devices=devices))


def prompts(rows: int, tokens: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (rows, tokens), generator=torch.Generator().manual_seed(seed))


def test_a_co_located_plan_generates_the_models_own_tokens_one_actor_per_device(saved_plan, ray_cluster):
    model, plan = saved_plan
    asked = prompts(3)  # one batch of the plan's two rows, and one with a row left empty

    with partitioner.deploy_on_ray(plan, model=model) as deployment:  # an LLM plan deploys as tokens
        assert sorted(deployment.workers) == sorted(plan.best.devices["decode"])
        assert deployment.batches_in_flight == 2, "one decode batch in flight per device decode runs on"
        got = deployment.generate(asked, 4)

        with pytest.raises(PartitionerError, match="more KV cache than the plan's 10 tokens of context"):
            deployment.generate(prompts(1, tokens=8), 4)
        again = deployment.generate(asked[:2], 2)  # a refused request leaves the deployment serving

    expected, _ = generate_as_member(model, asked, 4)
    assert torch.equal(got, expected)
    assert torch.equal(again, expected[:, :8][:2])


def test_a_disaggregated_plan_hands_each_prompts_cache_from_prefill_actors_to_decode_actors(saved_plan, ray_cluster):
    model, plan = saved_plan
    plan = disaggregated(plan)
    asked = prompts(4, seed=2)

    with deploy_llm_on_ray(plan, model) as deployment:
        assert sorted(deployment.workers) == ["tiny.0", "tiny.1", "tiny.2", "tiny.3"]
        got = deployment.generate(asked, 4)
        measured = deployment.benchmark(workload_requests(plan.workload, 6, 128))

    expected, _ = generate_as_member(model, asked, 4)
    assert torch.equal(got, expected)
    assert measured.requests == 6 and measured.output_tokens == 24
    assert len(measured.ttft_seconds) == 6 and len(measured.tpot_seconds) == 6
    assert all(seconds > 0 for seconds in (*measured.ttft_seconds, *measured.tpot_seconds))
    assert set(measured.utilisation) == {"tiny.0", "tiny.1", "tiny.2", "tiny.3"}
    assert all(share > 0 for share in measured.utilisation.values()), "every device ran its phase"
    assert set(measured.alone_ttft_seconds) == {6} and measured.alone_tpot_seconds > 0
    assert measured.predicted_tpot_seconds == plan.best.tpot_seconds
    assert measured.rows_filled == 1.0


def test_a_dead_actor_ends_the_deployment_with_one_error_and_nothing_left(saved_plan, ray_cluster):
    model, plan = saved_plan
    deployment = deploy_llm_on_ray(plan, model)
    ray.kill(deployment.workers["tiny.1"])

    with pytest.raises(PartitionerError, match="a device actor died"):
        deployment.generate(prompts(2), 3)

    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("partitioner-")]
    assert all(group["state"] == "REMOVED" for group in ray.util.placement_group_table().values())
    with pytest.raises(PartitionerError, match="shut down"):
        deployment.generate(prompts(2), 3)


def test_a_plan_that_splits_layers_across_a_group_is_refused_before_anything_starts(saved_plan):
    model, plan = saved_plan
    group = GroupCollectives(2, 4, 1e-4, 4, 1e-4, ("transformer.h.0.attn",))
    split = dataclasses.replace(plan, best=dataclasses.replace(plan.best, collectives={"tiny.tp2.0": group}))

    with pytest.raises(PartitionerError,
                       match=r"tensor-parallel groups \(tiny.tp2.0\).*--no-tensor-parallel.* run PLAN --check"):
        deploy_llm_on_ray(split, model)


def test_requests_come_from_the_workloads_buckets_by_their_shares_the_same_for_a_seed(saved_plan):
    _, plan = saved_plan
    workload = dataclasses.replace(plan.workload, prompt=type(plan.workload.prompt)(((4, 0.75), (8, 0.25))))

    drawn = workload_requests(workload, 400, 128, seed=3)

    assert [r.prompt_tokens for r in drawn] == [r.prompt_tokens for r in workload_requests(workload, 400, 128, seed=3)]
    assert 0.65 < sum(r.prompt_tokens == 4 for r in drawn) / 400 < 0.85
    assert all(0 <= int(r.prompt.max()) < 128 for r in drawn)


def test_a_prompts_file_gives_token_ids_and_lengths_and_a_bad_line_is_named(tmp_path):
    good = tmp_path / "prompts.jsonl"
    good.write_text('{"input_ids": [1, 2, 3], "max_new_tokens": 5}\n\n{"input_ids": [7]}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2]}\n{"prompt": "hello"}\n')
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"input_ids": [1, 2, 300]}\n')

    read = jsonl_requests(good, 128, default_output_tokens=4)

    assert [(r.prompt.tolist(), r.output_tokens) for r in read] == [([1, 2, 3], 5), ([7], 4)]
    with pytest.raises(PartitionerError, match=r"bad.jsonl line 2 has no input_ids.* serve does not tokenize"):
        jsonl_requests(bad, 128, default_output_tokens=4)
    with pytest.raises(PartitionerError, match=r"line 1: token id 300 is outside the model's vocabulary \(0..127\)"):
        jsonl_requests(outside, 128, default_output_tokens=4)


def test_serve_prints_tokens_per_second_ttft_and_tpot_beside_the_plans(saved_plan, ray_cluster, tmp_path, capsys):
    _, plan = saved_plan
    plan_path = plan.save(tmp_path / "llm_plan.json")
    model_file = tmp_path / "gpt2.py"
    model_file.write_text(textwrap.dedent("""
        from tests.partitioner.execution.test_llm_phases import small_gpt2

        def build():
            return small_gpt2(), {}
    """))
    requests = tmp_path / "prompts.jsonl"
    requests.write_text("".join(json.dumps({"input_ids": [3, 1, 4, 1, 5, 9], "max_new_tokens": 3}) + "\n"
                                for _ in range(3)))

    code = main(["serve", str(plan_path), "--model", str(model_file), "--prompts", str(requests)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "served      3 requests of GPT2LMHeadModel (9 output tokens)" in out and "decode batch 2, 2 batches in flight" in out
    assert "75% of decode rows filled" in out, "3 requests in batches of 2 leave one row empty"
    for row in ("output tokens/s", "TTFT alone, 6 tokens", "TPOT alone"):
        assert row in out
    assert "under load  TTFT p50" in out and "utilisation tiny." in out and "the plan's bottleneck" in out
    expected, _ = generate_as_member(small_gpt2(), torch.tensor([[3, 1, 4, 1, 5, 9]]), 3)
    assert f"  1: 6 prompt tokens -> {' '.join(map(str, expected[0, 6:].tolist()))}" in out, "the prompts' tokens"



SMALL = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


@pytest.mark.parametrize("config", [LlamaConfig(**SMALL), Gemma2Config(**SMALL, sliding_window=64)],
                         ids=["llama", "gemma2"])
def test_a_layers_attention_on_another_device_than_the_rest_generates_the_models_tokens(config, ray_cluster,
                                                                                        tmp_path):
    """Layer 0's attention on one device, everything else on the other. A static cache layer's position counter
    is read by the masks, before any layer, and handed on through a no-op cast to the attention, which increments
    it: the masks sit on one device, the attention on the other, so the increment lands on a copy unless it is
    copied back to the actor that keeps the counter."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    plan = plan_llm(model, load_workload_text(WORKLOAD), load_fleet(fleet_of_copies(tmp_path, "tiny", 2, {})),
                    time_limit_seconds=1, workers=1, deterministic=True)  # its placement is replaced below
    attention = "model.layers.0.self_attn"
    placed = {f"{phase}/{op.name}": "tiny.1" if op.module.startswith(attention) else "tiny.0"
              for phase, ops in plan.phase_ops.items() for op in ops}
    plan = dataclasses.replace(plan, best=dataclasses.replace(
        plan.best, assignment=placed, devices={"prefill": ("tiny.0", "tiny.1"), "decode": ("tiny.0", "tiny.1")}))
    asked = prompts(2, seed=3)

    with deploy_llm_on_ray(plan, model) as deployment:
        copied_back = any(phase.write_backs for phase in deployment.phases.values())
        got = deployment.generate(asked, 4)

    assert copied_back, "the case this test is about: a counter written on another device than its holder's"
    expected, _ = generate_as_member(model, asked, 4)
    assert torch.equal(got, expected)
