"""Record vLLM's own V1 scheduler over the golden streams (issue 23, item 1): ``make conformance`` runs it in
a virtual environment holding only a pinned vLLM, and the JSON it writes is committed under tests/conformance/.

No GPU and no model: vLLM's ``Scheduler`` and ``KVCacheManager`` are pure Python and run as the engine core
runs them (``schedule()``, then ``update_from_output()`` with the model's output), the model's output
replaced by a fake one (:func:`streams.output_token` for each request whose prefill completed in the step,
nothing for a partial chunk). The model config is a tiny Llama ``config.json`` written to a temporary
directory (the scheduler reads only its shape flags) and the KV cache is one full-attention group of
``num_gpu_blocks`` blocks, as vLLM's own tests build it. Per step the recording holds the tokens scheduled
for each request, the requests preempted while scheduling it and the blocks left free (cached blocks no request
uses count as free, as vLLM counts them); requests arrive before the step the stream
names, and when the scheduler has no request the step count jumps to the next arrival.

    python scripts/conformance/record_vllm.py --out tests/conformance/vllm-0.11.0.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import vllm  # noqa: E402
from streams import output_token, prompt_tokens, streams  # noqa: E402
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
              "vocab_size": 32064, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "torch_dtype": "float16",
              "bos_token_id": 1, "eos_token_id": 2}


def _kwargs(cls: Any, **candidates: Any) -> dict[str, Any]:
    """The arguments ``cls`` accepts among ``candidates`` (field names move between vLLM releases)."""
    names = set(inspect.signature(cls).parameters)
    return {k: v for k, v in candidates.items() if k in names}


def make_scheduler(engine: dict[str, Any], model_dir: str, async_scheduling: bool = False) -> Scheduler:
    block = engine["block_size"]
    model_config = ModelConfig(model=model_dir, tokenizer=model_dir, skip_tokenizer_init=True, dtype="float16",
                               seed=0, max_model_len=engine["max_model_len"])
    scheduler_config = SchedulerConfig(**_kwargs(
        SchedulerConfig, max_num_seqs=engine["max_num_seqs"], max_num_batched_tokens=engine["max_num_batched_tokens"],
        max_model_len=engine["max_model_len"], enable_chunked_prefill=engine["enable_chunked_prefill"],
        is_encoder_decoder=False, async_scheduling=async_scheduling))
    cache_config = CacheConfig(**_kwargs(CacheConfig, block_size=block, gpu_memory_utilization=0.9, swap_space=0,
                                         cache_dtype="auto", enable_prefix_caching=engine["enable_prefix_caching"]))
    vllm_config = VllmConfig(scheduler_config=scheduler_config, model_config=model_config, cache_config=cache_config,
                             device_config=DeviceConfig(device="cpu"))  # no platform is detected without a GPU
    spec = FullAttentionSpec(**_kwargs(FullAttentionSpec, block_size=block, num_kv_heads=1, head_size=1,
                                       dtype=torch.float32, use_mla=False))
    kv_cache_config = KVCacheConfig(num_blocks=engine["num_gpu_blocks"], kv_cache_tensors=[],
                                    kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
    cache_config.num_gpu_blocks = engine["num_gpu_blocks"]
    cls = AsyncScheduler if async_scheduling else Scheduler
    return cls(**_kwargs(Scheduler, vllm_config=vllm_config, kv_cache_config=kv_cache_config, log_stats=False,
                               structured_output_manager=StructuredOutputManager(vllm_config),
                               block_size=block))


def _request(spec: dict[str, Any], hasher: Any) -> Request:
    params = SamplingParams(max_tokens=spec["max_tokens"], ignore_eos=True)
    return Request(**_kwargs(Request, request_id=spec["id"], prompt_token_ids=prompt_tokens(spec["prompt"]),
                             sampling_params=params, pooling_params=None, eos_token_id=TINY_LLAMA["eos_token_id"],
                             block_hasher=hasher, mm_features=None, arrival_time=0.0))


def _output(scheduler: Scheduler, scheduled: dict[str, int]) -> ModelRunnerOutput:
    """The fake model's output: one token for each request whose computed tokens reach its length."""
    ids = list(scheduled)
    sampled = []
    for rid in ids:
        r = scheduler.requests[rid]
        index = r.num_output_tokens + max(getattr(r, "num_output_placeholders", 0) - 1, 0)  # async: in flight
        sampled.append([output_token(rid, index)] if r.num_computed_tokens >= r.num_tokens else [])
    index = {rid: i for i, rid in enumerate(ids)}
    return ModelRunnerOutput(**_kwargs(ModelRunnerOutput, req_ids=ids, req_id_to_index=index, sampled_token_ids=sampled,
                                       logprobs=None, prompt_logprobs_dict={}, pooler_output=[]))


def record(stream: dict[str, Any], model_dir: str, async_scheduling: bool = False) -> list[dict[str, Any]]:
    """vLLM's schedule of ``stream``: per step, the tokens scheduled per request and the requests preempted.
    With ``async_scheduling`` (the engine's default on a GPU in vLLM 0.34, off in 0.11) step ``k + 1`` is scheduled
    before the output of step ``k`` is applied, as the engine core's batch queue of two runs it."""
    engine = stream["engine"]
    scheduler = make_scheduler(engine, model_dir, async_scheduling)
    hasher = get_request_block_hasher(engine["block_size"],
                                      _hash_fn(scheduler.cache_config.prefix_caching_hash_algo))
    pending = sorted(stream["requests"], key=lambda s: s["arrive"])
    total, finished, step, steps = len(pending), set(), 0, []
    in_flight: deque = deque()  # scheduled steps whose output is not applied yet
    while len(finished) < total:
        if not scheduler.running and not scheduler.waiting and not in_flight and pending:
            step = max(step, pending[0]["arrive"])  # nothing to do: jump to the next arrival
        while pending and pending[0]["arrive"] <= step:
            scheduler.add_request(_request(pending.pop(0), hasher))
        before = {r.request_id for r in scheduler.running}
        out = scheduler.schedule()
        scheduled = dict(out.num_scheduled_tokens)
        preempted = sorted(rid for rid in before if scheduler.requests[rid].status == RequestStatus.PREEMPTED)
        if scheduled or preempted:
            steps.append({"step": step, "scheduled": dict(sorted(scheduled.items())), "preempted": preempted,
                          "free_blocks": scheduler.kv_cache_manager.block_pool.get_num_free_blocks()})
            in_flight.append((out, _output(scheduler, scheduled)))
            step += 1
        elif not in_flight:
            raise RuntimeError(f"vLLM scheduled nothing at step {step} with work left")
        if len(in_flight) > async_scheduling or (in_flight and not scheduled):
            engine_outputs = scheduler.update_from_output(*in_flight.popleft())
            for outputs in engine_outputs.values():
                finished.update(o.request_id for o in outputs.outputs if o.finish_reason is not None)
    return steps


def _hash_fn(algo: str) -> Any:
    """The prefix-cache hash the engine core uses (the cache config's algorithm), initialised as it does."""
    try:
        from vllm.utils.hashing import get_hash_fn_by_name  # noqa: PLC0415 (later releases)
    except ImportError:
        from vllm.utils import get_hash_fn_by_name  # noqa: PLC0415 (0.11)
    fn = get_hash_fn_by_name(algo)
    init_none_hash(fn)
    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--async-scheduling", action="store_true", help="record the AsyncScheduler instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as model_dir:
        Path(model_dir, "config.json").write_text(json.dumps(TINY_LLAMA))
        recorded = {name: {**stream, "steps": record(stream, model_dir, args.async_scheduling)}
                    for name, stream in streams().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "vllm_version": vllm.__version__, "scheduler": "async" if args.async_scheduling else "sync",
        "torch_version": torch.__version__, "python": sys.version.split()[0],
        "made_by": "scripts/conformance/record_vllm.py", "streams": recorded}, indent=1) + "\n")
    for name, stream in recorded.items():
        print(f"{name}: {len(stream['steps'])} steps, "
              f"{sum(len(s['preempted']) for s in stream['steps'])} preemptions")


if __name__ == "__main__":
    main()
