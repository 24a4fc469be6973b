"""A Hugging Face model folder is a model: compile plans it from its config.json on the meta device (its weights
are never loaded to plan), the plan records the folder and the sizes of its inputs, and the commands that run
it load the folder's safetensors weights (one file or a sharded index). A folder that is not one, an unknown
architecture and weights that do not fit the config are one line each, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

from partitioner.cli import main
from partitioner.frontend.model_folder import FolderInputs, build_model_folder


def llama(tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


def saved(model: torch.nn.Module, folder: Path, weights: bool = True, **options) -> Path:
    model.save_pretrained(folder, **options)
    if not weights:
        for path in folder.iterdir():
            if path.name != "config.json":
                path.unlink()
    return folder


def edited_config(folder: Path, **fields) -> Path:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return folder


def test_a_folder_without_weights_is_planned_on_the_meta_device_and_its_plan_records_folder_and_sizes(tmp_path):
    folder = saved(llama(), tmp_path / "tiny-llama", weights=False)

    assert main(["compile", str(folder), "--batch", "2", "--tokens", "16", "--time-limit", "3",
                 "-o", str(tmp_path / "out")]) == 0

    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["model"]["source"] == {"kind": "folder", "path": str(folder.resolve()), "function": None,
                                       "inputs": {"batch": 2, "tokens": 16, "image_size": None}}
    model, inputs = build_model_folder(folder, FolderInputs(2, 16), weights=True)  # nothing to load: meta
    assert all(p.is_meta for p in model.parameters()) and inputs["input_ids"].shape == (2, 16)


def test_running_a_plan_of_a_folder_without_weights_says_to_save_them(tmp_path, capsys):
    folder = saved(llama(), tmp_path / "tiny-llama", weights=False)
    assert main(["compile", str(folder), "--time-limit", "3", "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()

    assert main(["run", str(tmp_path / "out" / "plan.json"), "--check"]) == 2

    assert (f"the model folder {folder.resolve()} holds no weights (model.safetensors or its index): it can be "
            "planned but not run. Fix: save the model's weights into it") in capsys.readouterr().err


@pytest.mark.parametrize("shards", [None, "40KB"], ids=["one file", "sharded index"])
def test_a_plan_of_a_folder_with_weights_runs_with_them_and_computes_what_the_model_does(tmp_path, capsys, shards):
    options = {"max_shard_size": shards} if shards else {}
    folder = saved(llama(tie=True), tmp_path / "tiny-llama", **options)
    assert (folder / "model.safetensors.index.json").is_file() == bool(shards)

    assert main(["compile", str(folder), "--tokens", "12", "--time-limit", "3", "-o", str(tmp_path / "out")]) == 0
    assert main(["run", str(tmp_path / "out" / "plan.json"), "--check"]) == 0

    assert capsys.readouterr().out.strip().endswith("PASS")


def test_an_llm_plan_of_a_folder_is_planned_without_weights_and_generates_the_models_tokens(tmp_path, capsys):
    folder = saved(llama(), tmp_path / "tiny-llama")
    workload = tmp_path / "short.toml"
    workload.write_text('name = "short"\nprompt_tokens = 8\noutput_tokens = 4\nbatch_size = 2\n')

    assert main(["compile", str(folder), "--workload", str(workload), "--fleet", "cpu-x86=2", "--time-limit", "5",
                 "-o", str(tmp_path / "out")]) == 0
    assert main(["run", str(tmp_path / "out" / "llm_plan.json"), "--check"]) == 0

    assert "generation as placed" in capsys.readouterr().out


def test_a_vision_folder_gets_images_of_the_size_asked_for(tmp_path):
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=3)
    folder = saved(ViTForImageClassification(config), tmp_path / "tiny-vit", weights=False)

    assert build_model_folder(folder, FolderInputs(batch=2))[1]["pixel_values"].shape == (2, 3, 32, 32)
    assert build_model_folder(folder, FolderInputs(image_size=16))[1]["pixel_values"].shape == (1, 3, 16, 16)
    assert main(["compile", str(folder), "--image-size", "16", "--time-limit", "3", "-o", str(tmp_path / "out")]) == 0


def _truncated_config(folder: Path) -> Path:
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    return folder


def bad_folders(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = saved(llama(), tmp_path / "good")
    return {
        "no config": ((tmp_path / "empty").resolve(), "has no config.json, so it is not a Hugging Face model "
                                                      "folder. Fix: give the folder save_pretrained wrote"),
        "unknown architecture": (edited_config(saved(llama(), tmp_path / "arch", weights=False),
                                               architectures=["LlamaForNothing"]),
                                 "names the architecture 'LlamaForNothing', which transformers"),
        "unknown model type": (edited_config(saved(llama(), tmp_path / "type", weights=False), model_type="llamaz"),
                               "cannot be read by transformers"),
        "no architectures": (edited_config(saved(llama(), tmp_path / "none", weights=False), architectures=None),
                             "names no architectures"),
        "config not JSON": (_truncated_config(saved(llama(), tmp_path / "cut", weights=False)),
                            "config.json is not valid JSON ("),
        "weights of another shape": (edited_config(saved(llama(), tmp_path / "shape"), intermediate_size=96),
                                     "weights of another shape than the config's (e.g. model.layers.0.mlp"),
        "weights missing": (edited_config(saved(llama(), tmp_path / "deeper"), num_hidden_layers=3),
                            "9 weights missing (e.g. model.layers.2."),
    } | {"good": (good, "")}


@pytest.mark.parametrize("case", ["no config", "config not JSON", "unknown architecture", "unknown model type",
                                  "no architectures", "weights of another shape", "weights missing"])
def test_a_bad_folder_is_one_line_naming_the_problem_and_exit_2(tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    folder, message = bad_folders(tmp_path)[case]
    capsys.readouterr()  # what saving the folders printed

    # profile loads the weights; compile reads only the config.
    command = "profile" if case.startswith("weights") else "compile"
    assert main([command, str(folder), "-o", str(tmp_path / "out")]) == 2

    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and error.count("\n") == 1


def test_input_sizes_are_refused_for_a_model_that_makes_its_own_and_with_a_workload(tmp_path, capsys):
    model = tmp_path / "tiny.py"
    model.write_text("import torch\n\ndef build():\n    return torch.nn.Linear(4, 4), (torch.randn(2, 4),)\n")
    assert main(["compile", str(model), "--batch", "4", "-o", str(tmp_path / "out")]) == 2
    assert "size the inputs made for a model folder" in capsys.readouterr().err

    folder = saved(llama(), tmp_path / "tiny-llama", weights=False)
    assert main(["compile", str(folder), "--workload", "chat", "--tokens", "8", "-o", str(tmp_path / "out")]) == 2
    assert "with --workload the workload sizes prefill and decode" in capsys.readouterr().err


def test_from_python_a_folder_is_captured_without_its_weights_and_compiled(tmp_path):
    import partitioner

    folder = saved(llama(), tmp_path / "tiny-llama")
    captured = partitioner.load_model_file(str(folder), partitioner.FolderInputs(batch=2, tokens=8), weights=False)
    plan = partitioner.compile_captured(captured, ["npu-example", "cuda-h100"])

    assert all(t.is_meta for t in captured.program.state_dict.values())
    assert plan.model.source.kind == "folder" and plan.model.source.inputs == partitioner.FolderInputs(2, 8)


def test_a_moved_folder_given_with_model_runs_with_the_sizes_the_plan_was_compiled_with(tmp_path, capsys):
    folder = saved(llama(), tmp_path / "tiny-llama")
    assert main(["compile", str(folder), "--batch", "2", "--tokens", "12", "--time-limit", "3",
                 "-o", str(tmp_path / "out")]) == 0
    moved = folder.rename(tmp_path / "moved-llama")

    assert main(["run", str(tmp_path / "out" / "plan.json"), "--check", "--model", str(moved)]) == 0
    assert capsys.readouterr().out.strip().endswith("PASS")


def t5() -> torch.nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                                               vocab_size=100)).eval()


def clip() -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=100),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8))).eval()


@pytest.mark.parametrize("make", [t5, clip], ids=["encoder-decoder", "text and image"])
def test_other_architectures_plan_from_their_folders_and_run_with_their_weights(tmp_path, capsys, make):
    # T5's decoder makes constants, which a capture on the meta device holds without values: they come from the
    # capture with the weights. CLIP takes token ids and images both.
    folder = saved(make(), tmp_path / "model")

    assert main(["compile", str(folder), "--tokens", "8", "--time-limit", "3", "-o", str(tmp_path / "out")]) == 0
    assert main(["run", str(tmp_path / "out" / "plan.json"), "--check"]) == 0

    assert capsys.readouterr().out.strip().endswith("PASS")
