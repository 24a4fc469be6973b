"""A Hugging Face model folder as a model: what `save_pretrained` writes (config.json, maybe safetensors weights).

Transformers' own loaders read it: the config with `AutoConfig`, the model class from the config's
`architectures`. Planning needs no weights, so a plan's model is built on the meta device whatever the folder
holds; commands that run the model (run, export, serve, profile) load the folder's weights (one safetensors file
or a sharded index) with `from_pretrained`. Example inputs are made from the model's main input and sizes a user
sets (`FolderInputs`: batch, tokens, image size), which the plan records so later commands make the same ones.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from partitioner.errors import PartitionerError
from partitioner.fields import whole

CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True, slots=True)
class FolderInputs:
    """The sizes of the example inputs made for a model folder: sequences of `tokens` (text; audio samples), or
    images of `image_size` pixels a side (None: the config's, else 224), `batch` at a time."""

    batch: int = 1
    tokens: int = 128
    image_size: int | None = None

    def to_dict(self) -> dict:
        return {"batch": self.batch, "tokens": self.tokens, "image_size": self.image_size}

    @classmethod
    def from_dict(cls, data: Mapping) -> FolderInputs:
        return cls(whole(data, "batch", minimum=1), whole(data, "tokens", minimum=1),
                   whole(data, "image_size", minimum=1) if data.get("image_size") is not None else None)


def is_model_folder(path: str | Path) -> bool:
    return Path(path).is_dir()


def has_weights(folder: str | Path) -> bool:
    """Whether the folder holds weights transformers can load (a safetensors file or index, or PyTorch's)."""
    return any((Path(folder) / name).is_file() for name in WEIGHT_FILES)


def build_model_folder(folder: str | Path, inputs: FolderInputs = FolderInputs(),
                       weights: bool = True) -> tuple[torch.nn.Module, Any]:
    """The folder's model in eval mode with example inputs: with its weights where `weights` and the folder has
    them, else on the meta device (no memory for weights)."""
    folder = Path(folder)
    config = _config(folder)
    model_class = _model_class(folder, config)
    dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    if weights and has_weights(folder):
        model = _with_weights(folder, model_class)
        device = torch.device("cpu")
    else:
        with torch.device("meta"):  # as from_pretrained builds it: buffers kept in float32 stay so
            model = model_class._from_config(config, dtype=dtype)
        device = torch.device("meta")
    return model.eval(), _example_inputs(folder, model, config, inputs, device)


def _config(folder: Path):
    from transformers import AutoConfig

    if not folder.is_dir():
        raise PartitionerError(f"{folder} is not a folder. Fix: give a Hugging Face model folder (what "
                               "save_pretrained writes), a .py file with build(), or a .pt2 file.")
    if not (folder / CONFIG).is_file():
        raise PartitionerError(f"{folder} has no {CONFIG}, so it is not a Hugging Face model folder. Fix: give the "
                               "folder save_pretrained wrote (config.json and weights), or a .py file with build().")
    try:
        json.loads((folder / CONFIG).read_text())
    except (ValueError, OSError) as error:
        raise PartitionerError(f"{folder / CONFIG} is not valid JSON ({error}). Fix: repair it, or write it again "
                               "with the model's config.save_pretrained(folder).") from None
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError, OSError) as error:
        raise PartitionerError(f"{folder / CONFIG} cannot be read by transformers {_version()}: "
                               f"{_first_line(error)}. Fix: check its model_type, or update transformers.") from None


def _model_class(folder: Path, config) -> type[torch.nn.Module]:
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    if not names:
        raise PartitionerError(f"{folder / CONFIG} names no architectures, so the model's class (a causal LM, "
                               "a classifier ...) is unknown. Fix: add \"architectures\": [\"...ForCausalLM\"] (the "
                               "class save_pretrained wrote it from).")
    model_class = getattr(transformers, names[0], None)
    if model_class is None:
        raise PartitionerError(f"{folder / CONFIG} names the architecture {names[0]!r}, which transformers "
                               f"{_version()} does not have. Fix: correct the name, or update transformers.")
    return model_class


def _with_weights(folder: Path, model_class) -> torch.nn.Module:
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            model, loading = model_class.from_pretrained(folder, local_files_only=True, dtype="auto",
                                                         output_loading_info=True, ignore_mismatched_sizes=True)
    except (RuntimeError, ValueError, OSError) as error:
        raise _mismatch(folder, model_class, _first_line(error)) from None
    # transformers fills a weight the files lack, or hold in another shape, with random values and only warns:
    # here either is an error.
    mismatched = [item[0] if isinstance(item, (list, tuple)) else str(item)
                  for item in loading.get("mismatched_keys", ())]
    if mismatched:
        raise _mismatch(folder, model_class, f"{len(mismatched)} weights of another shape than the config's (e.g. "
                                             f"{sorted(mismatched)[0]})")
    missing = sorted(loading.get("missing_keys", ()))
    if missing:
        raise _mismatch(folder, model_class, f"{len(missing)} weights missing (e.g. {missing[0]})")
    return model


def _mismatch(folder: Path, model_class, problem: str) -> PartitionerError:
    return PartitionerError(f"the weights in {folder} do not load into {model_class.__name__} as its {CONFIG} "
                            f"describes it: {problem}. Fix: give the weights saved with this config "
                            "(save_pretrained writes both).")


def _example_inputs(folder: Path, model: torch.nn.Module, config, inputs: FolderInputs,
                    device: torch.device) -> dict:
    name = getattr(model, "main_input_name", "input_ids")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    parameters = inspect.signature(model.forward).parameters
    dtype = _dtype(model)
    size = inputs.image_size or _image_size(config)

    def images(channels: int) -> torch.Tensor:
        return torch.randn(inputs.batch, channels, size, size, dtype=dtype, device=device)

    if name == "input_ids":
        made = {"input_ids": torch.randint(0, text.vocab_size, (inputs.batch, inputs.tokens), device=device)}
        if getattr(config, "is_encoder_decoder", False):
            made["decoder_input_ids"] = made["input_ids"].clone()
    elif name == "pixel_values":
        made = {"pixel_values": images(getattr(config, "num_channels", 3))}
        if size != _image_size(config) and "interpolate_pos_encoding" in parameters:
            made["interpolate_pos_encoding"] = True  # position embeddings learnt at the config's size
    elif name == "input_values":
        made = {"input_values": torch.randn(inputs.batch, inputs.tokens, dtype=dtype, device=device)}
    elif name == "input_features" and hasattr(config, "num_mel_bins") and hasattr(config, "max_source_positions"):
        # A log-mel spectrogram of the length the encoder takes (Whisper: two frames a position).
        made = {"input_features": torch.randn(inputs.batch, config.num_mel_bins, 2 * config.max_source_positions,
                                              dtype=dtype, device=device),
                "decoder_input_ids": torch.zeros(inputs.batch, inputs.tokens, dtype=torch.long, device=device)}
    else:
        raise PartitionerError(f"{type(model).__name__} (from {folder}) takes {name!r}, for which no example "
                               "inputs are made here. Fix: write a .py file whose build() returns the model and its "
                               "inputs.")
    if name != "pixel_values" and "pixel_values" in parameters and getattr(config, "vision_config", None):
        made["pixel_values"] = images(getattr(config.vision_config, "num_channels", 3))  # text and images (CLIP)
    if getattr(config, "use_cache", False) and not getattr(config, "is_encoder_decoder", False):
        made["use_cache"] = False  # one forward pass, no cache to return
    return made


def _image_size(config) -> int:
    size = getattr(config, "image_size", None) or getattr(getattr(config, "vision_config", None), "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else 224


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")


def _version() -> str:
    import transformers

    return transformers.__version__
