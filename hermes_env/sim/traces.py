"""Request traces: reading the public production traces (and a user's own files in their formats).

Formats, recognised by extension and header:

* **Azure** CSV (Splitwise's Azure LLM inference trace 2023): ``arrived_at`` (seconds from the start),
  ``num_prefill_tokens``, ``num_decode_tokens`` (as Vidur ships it), or the raw dataset's ``TIMESTAMP``
  (datetimes), ``ContextTokens``, ``GeneratedTokens``;
* **Mooncake** JSONL (FAST 2025): one object a line with ``timestamp`` (milliseconds), ``input_length``,
  ``output_length`` and ``hash_ids``, the ids of the prompt's 512-token blocks (equal ids: a shared prefix);
* **plain CSV**: ``arrival`` (seconds), ``prompt_tokens``, ``output_tokens`` and optionally ``prefix_ids``
  (space-separated ids of 512-token blocks, as Mooncake's); or only ``timestamp`` (seconds) for a trace of
  arrival times alone.

A malformed file (a missing column, a negative, decreasing or non-numeric timestamp, a non-numeric or
negative length, no rows) is an error naming the file and line. The shipped traces are found by name
(:data:`TRACE_NAMES`; ``hermes_env/data/traces/SOURCE.md`` gives their origin and licences).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env.cluster.prefix import GrowingSegment, Segment
from hermes_env.errors import ConfigError, require

BLOCK_TOKENS = 512  # the block size of Mooncake's hash ids
AGENTIC_KEYS = frozenset({"wait_for", "branches", "tool_wait_ms", "prefix_reset"})  # hermes_env.sim.agentic's rows
TRACE_NAMES = ("azure_llm_2023_code", "azure_llm_2023_conv", "mooncake_conversation", "mooncake_synthetic")


@dataclass(frozen=True)
class Trace:
    """Arrival times (seconds from the first request) and, unless the trace has only timestamps, prompt and
    output tokens per request and the ids of each prompt's 512-token blocks (``None`` without them)."""

    path: str
    arrival: np.ndarray
    prompt: np.ndarray | None
    output: np.ndarray | None
    block_ids: tuple[tuple[int, ...], ...] | None

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def has_tokens(self) -> bool:
        return self.prompt is not None

    def window(self, start: float, end: float) -> Trace:
        """The requests arriving in ``[start, end)`` seconds, times shifted to start at 0."""
        keep = (self.arrival >= start) & (self.arrival < end)
        require(keep.any(), "workload.arrivals.window", f"holds no request of {self.path} ({len(self)} requests "
                f"over {self.arrival[-1]:.0f} s)", "choose a window inside the trace")
        idx = np.flatnonzero(keep)
        pick = (lambda a: a[idx]) if self.prompt is not None else (lambda a: a)
        return Trace(self.path, self.arrival[idx] - self.arrival[idx[0]], pick(self.prompt), pick(self.output),
                     tuple(self.block_ids[i] for i in idx) if self.block_ids is not None else None)

    @property
    def rate(self) -> float:
        """Requests per second over the trace (one less than the count, over the span)."""
        span = float(self.arrival[-1] - self.arrival[0])
        return (len(self) - 1) / span if span > 0 else float("inf")


def trace_path(name_or_path: str | Path, field: str = "workload.arrivals.trace") -> Path:
    """A shipped trace by name, or a file by path (``field`` names it in the error when there is none)."""
    if str(name_or_path) in TRACE_NAMES:
        folder = Path(str(resources.files("hermes_env.data.traces")))
        return next(folder / f for f in (f"{name_or_path}.csv", f"{name_or_path}.jsonl") if (folder / f).is_file())
    path = Path(name_or_path)
    require(path.is_file(), field, f"no file {str(path)!r}",
            f"give a path, or one of the shipped traces {list(TRACE_NAMES)}")
    return path


def load_trace(name_or_path: str | Path, field: str = "workload.arrivals.trace") -> Trace:
    path = trace_path(name_or_path, field)
    return _load(str(path), os.path.getmtime(path))


@lru_cache(maxsize=16)
def _load(path: str, mtime: float) -> Trace:
    if path.endswith((".jsonl", ".json")):
        return _mooncake(path)
    return _csv(path)


def _number(text: str, path: str, line: int, column: str, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: line {line}", f"{column} {text!r} is not {'an integer' if integer else 'a number'}",
                          "fix or remove the line") from None
    require(value >= 0 and value == value and value != float("inf"), f"{path}: line {line}",
            f"{column} {text!r} must be a finite number >= 0")
    return value


def _checked_times(times: list[float], path: str, first_line: int) -> np.ndarray:
    t = np.array(times, dtype=float)
    back = np.flatnonzero(np.diff(t) < 0)
    require(not len(back), f"{path}: line {int(back[0]) + first_line + 1 if len(back) else 0}",
            "timestamp is earlier than the one before", "sort the trace by time")
    return t - t[0]


_CSV_COLUMNS = {  # format: (time, prompt, output)
    "azure": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    "azure-raw": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "plain": ("arrival", "prompt_tokens", "output_tokens"),
}


def _csv(path: str) -> Trace:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        rows = list(reader)
    require(bool(rows), path, "has no requests", "give a CSV with a header line and one line per request")
    kind = next((k for k, cols in _CSV_COLUMNS.items() if cols[0] in header), None)
    if kind is None:
        require("timestamp" in header, path, f"has none of the known time columns (header: {header})",
                "name the columns arrival, prompt_tokens, output_tokens (plain), arrived_at, num_prefill_tokens, "
                "num_decode_tokens (Azure), or timestamp alone (arrival times only)")
        times = [_number(r["timestamp"], path, i + 2, "timestamp") for i, r in enumerate(rows)]
        return Trace(path, _checked_times(times, path, 2), None, None, None)
    time_col, prompt_col, output_col = _CSV_COLUMNS[kind]
    for col in (prompt_col, output_col):
        require(col in header, path, f"has no {col!r} column", f"a {kind} trace needs {', '.join(_CSV_COLUMNS[kind])}")
    if kind == "azure-raw":
        try:
            stamps = np.array([r[time_col].strip()[:26] for r in rows], dtype="datetime64[us]")
        except ValueError:
            bad = next(i for i, r in enumerate(rows) if not _is_datetime(r[time_col]))
            raise ConfigError(f"{path}: line {bad + 2}", f"TIMESTAMP {rows[bad][time_col]!r} is not a datetime",
                              "fix or remove the line") from None
        times = ((stamps - stamps[0]).astype("timedelta64[us]").astype(float) / 1e6).tolist()
    else:
        times = [_number(r[time_col], path, i + 2, time_col) for i, r in enumerate(rows)]
    prompt = [_number(r[prompt_col], path, i + 2, prompt_col, integer=True) for i, r in enumerate(rows)]
    output = [_number(r[output_col], path, i + 2, output_col, integer=True) for i, r in enumerate(rows)]
    blocks = None
    if "prefix_ids" in header:
        blocks = tuple(_ids(r["prefix_ids"].split(), path, i + 2) for i, r in enumerate(rows))
    return Trace(path, _checked_times(times, path, 2), np.array(prompt, dtype=np.int64),
                 np.array(output, dtype=np.int64), blocks)


def _is_datetime(text: str) -> bool:
    try:
        np.datetime64(text.strip()[:26], "us")
    except ValueError:
        return False
    return True


def _ids(raw: list, path: str, line: int) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: line {line}", f"prefix block ids {raw!r} are not integers") from None


def json_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON-lines file with their line numbers (blank lines skipped); a line that is
    not a JSON object is an error naming it."""
    with open(path) as fh:
        for line, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: line {line}", f"is not JSON ({err.msg})",
                                  "write one JSON object a line") from None
            require(isinstance(row, dict), f"{path}: line {line}", "is not a JSON object")
            yield line, row


def _mooncake(path: str) -> Trace:
    times, prompt, output, blocks = [], [], [], []
    for line, row in json_lines(path):
        require(not AGENTIC_KEYS & row.keys(), f"{path}: line {line}",
                f"has {sorted(AGENTIC_KEYS & row.keys())}: it is an agentic Mooncake row (NVIDIA Dynamo)",
                "replay it with format: dynamo-agentic (hermes_env.sim.agentic)")
        for key in ("timestamp", "input_length", "output_length"):
            require(key in row, f"{path}: line {line}", f"has no {key!r}",
                    "a Mooncake trace line has timestamp, input_length, output_length and hash_ids")
        times.append(_number(row["timestamp"], path, line, "timestamp") / 1000.0)
        prompt.append(_number(row["input_length"], path, line, "input_length", integer=True))
        output.append(_number(row["output_length"], path, line, "output_length", integer=True))
        blocks.append(_ids(row.get("hash_ids", []), path, line))
    require(bool(times), path, "has no requests", "give one JSON object a line")
    return Trace(path, _checked_times(times, path, 1), np.array(prompt, dtype=np.int64),
                 np.array(output, dtype=np.int64), tuple(blocks))


class BlockChains:
    """Prompts described by a trace's block ids as chains of segments (:mod:`hermes_env.cluster.prefix`):
    one segment per block of ``block_size`` tokens (Mooncake's 512 by default), identified by the chain of
    ids before it and its own (so equal ids after equal prefixes are the same cached KV, as Mooncake's
    chained hashes mean)."""

    def __init__(self, block_size: int = BLOCK_TOKENS) -> None:
        self.block_size = block_size
        self._segments: dict[tuple[Segment | None, int], Segment] = {}

    def chain(self, ids: tuple[int, ...], prompt: int) -> tuple[Segment, ...]:
        out: list[Segment] = []
        parent = None
        size = self.block_size
        for k, block in enumerate(ids):
            start = k * size
            if start >= prompt:
                break
            key = (parent, block)
            seg = self._segments.get(key)
            if seg is None:
                seg = self._segments[key] = GrowingSegment(parent, start, min(size, prompt - start))
            elif seg.size < min(size, prompt - start):  # a block seen before as a prompt's partial tail
                seg.size = min(size, prompt - start)
            out.append(seg)
            parent = seg
        end = out[-1].start + out[-1].size if out else 0
        if end < prompt:  # tokens past the trace's ids: fresh
            out.append(Segment(parent, end, prompt - end))
        return tuple(out)
