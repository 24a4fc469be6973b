"""The requests an LLM deployment serves: a prompt's token ids and how many tokens to generate for it, drawn from
a workload's buckets (seeded) or read from a JSONL file a user gives."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from partitioner.errors import PartitionerError
from targets.workload import Lengths, Workload


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """One request: its prompt (token ids, one dimension) and the tokens to generate, the first one included."""

    prompt: torch.Tensor
    output_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return int(self.prompt.shape[0])


def workload_requests(workload: Workload, count: int, vocab_size: int, seed: int = 0) -> tuple[LLMRequest, ...]:
    """`count` requests whose prompt and output lengths are drawn from the workload's buckets by their shares,
    with random token ids; the same for a seed."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(LLMRequest(torch.randint(0, vocab_size, (_drawn(workload.prompt, generator),), generator=generator),
                            _drawn(workload.output, generator)) for _ in range(count))


def _drawn(lengths: Lengths, generator: torch.Generator) -> int:
    shares = torch.tensor([share for _, share in lengths.buckets], dtype=torch.float64)
    return lengths.buckets[int(torch.multinomial(shares, 1, generator=generator))][0]


def jsonl_requests(path: str | Path, vocab_size: int, default_output_tokens: int) -> tuple[LLMRequest, ...]:
    """The requests of a JSONL file, one object a line: {"input_ids": [...], "max_new_tokens": N}
    (max_new_tokens optional: the workload's longest output by default)."""
    requests = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise PartitionerError(f"cannot read the prompts file {path}: {error.strerror}. Fix: give a JSONL file of "
                               '{"input_ids": [...], "max_new_tokens": N} lines.') from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise PartitionerError(f"{where} is not JSON ({error.msg}). Fix: one JSON object a line.") from None
        ids = record.get("input_ids") if isinstance(record, dict) else None
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise PartitionerError(f"{where} has no input_ids, a list of token ids. Fix: write "
                                   '{"input_ids": [1, 2, ...]} (prompts as token ids: serve does not tokenize text).')
        outside = next((i for i in ids if not 0 <= i < vocab_size), None)
        if outside is not None:
            raise PartitionerError(f"{where}: token id {outside} is outside the model's vocabulary (0..{vocab_size - 1})."
                                   " Fix: give ids the model's tokenizer makes for it.")
        new = record.get("max_new_tokens", default_output_tokens)
        if not (isinstance(new, int) and not isinstance(new, bool) and new >= 1):
            raise PartitionerError(f"{where}: max_new_tokens must be a whole number of at least 1, got {new!r}. "
                                   "Fix: give e.g. 64, or leave it out.")
        requests.append(LLMRequest(torch.tensor(ids, dtype=torch.long), new))
    if not requests:
        raise PartitionerError(f"{path} holds no requests. Fix: write one JSON object a line.")
    return tuple(requests)
