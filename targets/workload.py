"""Workloads: what an LLM is asked to serve, as data (prompt and output lengths, batch, latency limits).

    name = "chat"
    prompt_tokens = [{ tokens = 256, share = 0.6 }, { tokens = 1024, share = 0.4 }]   # or one number
    output_tokens = 512
    batch_size = 16            # optional: the decode batch; chosen for the least money per token when absent
    max_batch_size = 128       # optional: the largest batch the choice may take (default 256)
    requests_per_second = 20   # optional: the load the plan must serve
    ttft_ms = 1000             # optional: limit on the time to the first token
    tpot_ms = 100              # optional: limit on the time per output token

Prefill is planned at each prompt bucket, weighted by its share (attention grows
faster than linearly in the prompt, so the mean length would undercount it), and
a TTFT limit holds for the longest prompt; output buckets set the decode steps a
request takes on average. The KV cache is sized for the longest prompt plus the
longest output, since a static cache holds the most a request can need. Built-in workloads live in targets/builtin/workloads/.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from pathlib import Path

from partitioner.errors import PartitionerError
from partitioner.fields import exactly, listed, number, text, whole
from partitioner.files import WORKLOAD
from targets.spec_reader import TomlReader, read_toml

WORKLOADS_DIR = Path(__file__).parent / "builtin" / "workloads"
_FIELDS = {"name", "description", "prompt_tokens", "output_tokens", "batch_size", "max_batch_size",
           "requests_per_second", "ttft_ms", "tpot_ms"}
DEFAULT_MAX_BATCH = 256
# Each prompt length is a prefill graph annotated and costed on every device: more than this many would take
# minutes outside the search's time limit.
MOST_PROMPT_BUCKETS = 32


@dataclass(frozen=True, slots=True)
class Lengths:
    """Token counts with their shares of requests (shares sum to 1)."""

    buckets: tuple[tuple[int, float], ...]

    @property
    def mean(self) -> float:
        return sum(tokens * share for tokens, share in self.buckets)

    @property
    def longest(self) -> int:
        return max(tokens for tokens, _ in self.buckets)

    def describe(self) -> str:
        if len(self.buckets) == 1:
            return str(self.buckets[0][0])
        return " / ".join(f"{tokens} ({100 * share:.0f}%)" for tokens, share in self.buckets)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    prompt: Lengths
    output: Lengths
    batch_size: int | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH
    requests_per_second: float | None = None
    ttft_seconds: float | None = None
    tpot_seconds: float | None = None
    description: str = ""

    @property
    def output_tokens(self) -> float:
        """Output tokens per request on average: decode steps per request."""
        return self.output.mean

    @property
    def context_tokens(self) -> int:
        """What each request's KV cache must hold: the longest prompt plus the longest output."""
        return self.prompt.longest + self.output.longest

    def describe(self) -> str:
        limits = [f"TTFT <= {self.ttft_seconds * 1e3:g} ms"] if self.ttft_seconds else []
        limits += [f"TPOT <= {self.tpot_seconds * 1e3:g} ms"] if self.tpot_seconds else []
        return (f"{self.name}: prompts {self.prompt.describe()} tokens, outputs {self.output.describe()} tokens"
                + (f", {self.requests_per_second:g} req/s" if self.requests_per_second else "")
                + (f"; {', '.join(limits)}" if limits else ""))

    def to_dict(self) -> dict:
        return {"name": self.name, "prompt_tokens": [list(b) for b in self.prompt.buckets],
                "output_tokens": [list(b) for b in self.output.buckets], "batch_size": self.batch_size,
                "max_batch_size": self.max_batch_size, "requests_per_second": self.requests_per_second,
                "ttft_seconds": self.ttft_seconds, "tpot_seconds": self.tpot_seconds,
                "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping) -> Workload:
        """The workload `to_dict` wrote (a plan file's); raises FieldError naming a field that is not right."""
        return cls(text(data, "name"), Lengths(listed(data, "prompt_tokens", _bucket)),
                   Lengths(listed(data, "output_tokens", _bucket)), _optional(data, "batch_size", whole, minimum=1),
                   whole(data, "max_batch_size", DEFAULT_MAX_BATCH, minimum=1),
                   _optional(data, "requests_per_second", number), _optional(data, "ttft_seconds", number),
                   _optional(data, "tpot_seconds", number), text(data, "description", ""))


def _bucket(found: Any) -> tuple[int, float]:
    """A [tokens, share] pair of a plan file's workload."""
    tokens, share = exactly(found, 2, lambda item: item, "[tokens, share]")
    return whole({"tokens": tokens}, "tokens", minimum=1), number({"share": share}, "share", maximum=1.0)


def _optional(data: Mapping, key: str, read: Callable[..., Any], **limits: Any) -> Any:
    """A field that may be null (a limit the workload does not set)."""
    return None if data.get(key) is None else read(data, key, **limits)


def builtin_workload_names() -> list[str]:
    return sorted(path.stem for path in WORKLOADS_DIR.glob("*.toml"))


def load_workload(name_or_path: str | Path) -> Workload:
    """A built-in workload by name, or a workload file by path."""
    text = str(name_or_path)
    named = text.endswith(".toml") or "/" in text or Path(text).is_file()
    path = Path(text) if named else WORKLOADS_DIR / f"{text}.toml"
    if not path.exists():
        known = builtin_workload_names()
        close = difflib.get_close_matches(text, known, n=1)
        raise PartitionerError(f"unknown workload {text!r}: built-in workloads are {', '.join(known)}. Fix: "
                               f"{f'did you mean {close[0]!r}? ' if close else ''}name one, or give the path of a "
                               ".toml workload file.")
    return _WorkloadReader(path, read_toml(path, WORKLOAD)).workload()


class _WorkloadReader(TomlReader):
    def workload(self) -> Workload:
        self.check_known_fields(self.data, _FIELDS, "")
        for field in ("prompt_tokens", "output_tokens"):
            if field not in self.data:
                raise self.fail(field, "missing", f"give the {field.split('_')[0]} length in tokens, e.g. "
                                                  f"{field} = 512")
        batch = self._whole("batch_size", None)
        most = self._whole("max_batch_size", DEFAULT_MAX_BATCH)
        if batch is not None and batch > most:
            raise self.fail("batch_size", f"{batch} is over max_batch_size {most}", "lower it or raise the bound")
        name = self.data.get("name", self.path.stem)
        if not isinstance(name, str) or not name:
            raise self.fail("name", f"{name!r} is not a name", "give a short text such as \"chat\"")
        return Workload(name, self._lengths("prompt_tokens"), self._lengths("output_tokens"), batch, most,
                        self._positive("requests_per_second", 1.0), self._positive("ttft_ms", 1e-3),
                        self._positive("tpot_ms", 1e-3), str(self.data.get("description", "")))

    def _lengths(self, field: str) -> Lengths:
        value = self.data[field]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [{"tokens": value, "share": 1.0}]
        if not isinstance(value, list) or not value:
            raise self.fail(field, f"{value!r} is not a token count or a list of buckets",
                            f"write {field} = 512, or {field} = [{{ tokens = 256, share = 0.5 }}, ...]")
        buckets = []
        for index, bucket in enumerate(value):
            where = f"{field}[{index}]"
            if not isinstance(bucket, dict):
                raise self.fail(where, f"{bucket!r} is not a bucket", "write { tokens = 256, share = 0.5 }")
            self.check_known_fields(bucket, {"tokens", "share"}, where + ".")
            tokens, share = bucket.get("tokens"), bucket.get("share", 1.0 if len(value) == 1 else None)
            if not isinstance(tokens, int) or isinstance(tokens, bool) or not 1 <= tokens <= 10_000_000:
                raise self.fail(where + ".tokens", f"{tokens!r} is not a token count", "give a whole number >= 1")
            if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share <= 1:
                raise self.fail(where + ".share", f"{share!r} is not a share", "give a number in (0, 1]")
            buckets.append((tokens, float(share)))
        total = sum(share for _, share in buckets)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise self.fail(field, f"the shares sum to {total:g}, not 1", "make the buckets' shares add up to 1")
        merged: dict[int, float] = {}
        for tokens, share in buckets:  # two buckets of one length are one bucket
            merged[tokens] = merged.get(tokens, 0.0) + share
        if field == "prompt_tokens" and len(merged) > MOST_PROMPT_BUCKETS:
            raise self.fail(field, f"{len(merged)} prompt lengths, and each is a prefill graph to cost",
                            f"merge them into at most {MOST_PROMPT_BUCKETS} buckets (round lengths to a few sizes, "
                            "adding their shares)")
        return Lengths(tuple(merged.items()))

    def _whole(self, field: str, default: int | None) -> int | None:
        value = self.data.get(field, default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise self.fail(field, f"{value!r} is not a whole number of at least 1", "give e.g. 16")
        return value

    def _positive(self, field: str, scale: float) -> float | None:
        value = self.data.get(field)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
            raise self.fail(field, f"{value!r} is not a positive number", "give a number above 0")
        return float(value) * scale
