"""What serving an LLM plan on Ray measured: output tokens per second, TTFT and TPOT, each device's busy share,
beside what the plan predicted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from partitioner.deploy.measurement import percentile


@dataclass(frozen=True, slots=True)
class LLMServeMeasurement:
    """A run of `requests` requests, `batches_in_flight` decode batches of `batch_size` rows at a time.

    `ttft_seconds` are per request, from its batch's admission to its first token (the prompts of a batch are
    prefilled one after another, so later rows wait for earlier ones); `tpot_seconds` per request, its decode
    time over its tokens after the first. `alone_*` are one prefill, and one batch's decode steps, with nothing
    else in flight: what the plan's TTFT and TPOT describe. `rows_filled` is the share of the decode rows run
    that carried a request (a batch's last rows are empty where too few requests share its lengths).
    """

    requests: int
    output_tokens: int
    seconds: float
    batch_size: int
    batches_in_flight: int
    ttft_seconds: tuple[float, ...]
    tpot_seconds: tuple[float, ...]
    alone_ttft_seconds: Mapping[int, float]  # prompt tokens -> one prefill alone
    alone_tpot_seconds: float
    rows_filled: float
    utilisation: Mapping[str, float]
    devices: Mapping[str, str]  # place -> the torch device its actor ran on ("cpu" where emulated)
    predicted_output_tokens_per_second: float
    predicted_ttft_seconds: Mapping[int, float]  # prompt tokens -> the plan's TTFT
    predicted_tpot_seconds: float
    bottleneck: str  # the device (or link) the plan says limits it
    outputs: tuple[tuple[int, ...], ...] = ()  # each request's generated token ids, in the order of the requests

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {"requests": self.requests, "output_tokens": self.output_tokens, "seconds": self.seconds,
                "batch_size": self.batch_size, "batches_in_flight": self.batches_in_flight,
                "output_tokens_per_second": self.output_tokens_per_second,
                "ttft_p50_seconds": percentile(self.ttft_seconds, 50),
                "ttft_p90_seconds": percentile(self.ttft_seconds, 90),
                "tpot_p50_seconds": percentile(self.tpot_seconds, 50),
                "tpot_p90_seconds": percentile(self.tpot_seconds, 90),
                "alone_ttft_seconds": {str(k): v for k, v in self.alone_ttft_seconds.items()},
                "alone_tpot_seconds": self.alone_tpot_seconds, "rows_filled": self.rows_filled,
                "utilisation": dict(self.utilisation), "devices": dict(self.devices),
                "predicted_output_tokens_per_second": self.predicted_output_tokens_per_second,
                "predicted_ttft_seconds": {str(k): v for k, v in self.predicted_ttft_seconds.items()},
                "predicted_tpot_seconds": self.predicted_tpot_seconds, "bottleneck": self.bottleneck}

