"""A real continuous-batching engine under hermes_env's application runtime (issue 23, item 2).

The engine is transformers' continuous batching (``ContinuousBatchProcessor``: a FIFO scheduler with a
per-iteration token budget, decodes first, chunked prefill, paged KV in blocks, prefix sharing of whole
blocks) over a Llama-3.1-8B-shaped model with random bf16 weights. Its background thread is not used: this
module runs the processor's own loop body (``prepare_next_batch``, the forward step, ``update_batch``) one
iteration at a time, so that every iteration's composition and times are recorded (wall time of the
scheduler's preparation, of the forward pass with its sampling and device-to-host copy, of the update).

The application runtime is hermes_env's own :class:`~hermes_env.sim.Simulation` (arrivals, PDGraph
realisations, tool stages as timed waits with their cold starts, FCFS or Gittins priorities, metrics) with
two parts replaced: :class:`RealTimeEngine` runs its events at wall-clock times, and :class:`RealReplica`
sends each LLM request to the real engine instead of the latency model. A request's priority key orders
the engine's waiting queue (a priority queue in front of the FIFO engine, with no feeding lag), so the
application-level scheduler decides which waiting request the engine admits next, as in the simulator.

Prompts are token ids made from the requests' prefix chains (:mod:`hermes_env.cluster.prefix`): equal
segments give equal tokens and an answer segment is the tokens the engine generated, so the real engine's
prefix cache finds the prefixes the simulator's finds. Outputs have exactly the simulated length (no EOS).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
import torch

from hermes_env.cluster import llm as llm_module
from hermes_env.cluster.prefix import Segment
from hermes_env.sim import simulator as simulator_module
from hermes_env.sim.engine import Engine, fewer_collections

# Llama-3.1-8B's config.json (Meta): the shape, not the weights
LLAMA31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                  rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
VARLEN = "paged|flash_varlen_torch"  # our registration: PyTorch's own flash-attention varlen kernel


# -- attention ---------------------------------------------------------------------------------------------
def _varlen_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Per-sequence causal attention aligned bottom-right (the last query sees every key): the CPU path and
    the check of the GPU kernel. q (Tq, H, D), k and v (Tk, Hkv, D)."""
    out = torch.empty_like(q)
    rep = q.shape[1] // k.shape[1]
    for i in range(len(cu_q) - 1):
        qs, qe, ks, ke = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i]), int(cu_k[i + 1])
        qi = q[qs:qe].transpose(0, 1).float()
        ki = k[ks:ke].repeat_interleave(rep, 1).transpose(0, 1).float()
        vi = v[ks:ke].repeat_interleave(rep, 1).transpose(0, 1).float()
        nq, nk = qe - qs, ke - ks
        mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
        o = torch.nn.functional.scaled_dot_product_attention(qi[None], ki[None], vi[None], attn_mask=mask, scale=scale)
        out[qs:qe] = o[0].transpose(0, 1).to(q.dtype)
    return out


def _varlen_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                 max_q: int, max_k: int, scale: float, repeat_kv: bool) -> torch.Tensor:
    if repeat_kv:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, int(max_q), int(max_k), 0.0, True, False,
                                                  scale=scale)
    return out[0]


VARLEN_MODE = {"fn": "reference", "repeat_kv": False}


def varlen_paged_attention(module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           attention_mask: Any, cache: Any = None, cu_seq_lens_q: Any = None,
                           cu_seq_lens_k: Any = None, max_seqlen_q: Any = None, max_seqlen_k: Any = None,
                           block_table: Any = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' flash paged attention (integrations/flash_paged.py, the varlen path) on PyTorch's
    flash kernel: K/V written to and read from the paged cache by index, then causal varlen attention."""
    if isinstance(cu_seq_lens_k, dict):
        cu_seq_lens_k, max_seqlen_k = cu_seq_lens_k["full_attention"], max_seqlen_k["full_attention"]
    k, v = cache.update(key_states=k, value_states=v, layer_idx=module.layer_idx, read_index=kwargs["read_index"],
                        write_index=kwargs["write_index"])
    q = q.transpose(1, 2).squeeze(0).contiguous()
    cu_q, cu_k = cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32)
    if VARLEN_MODE["fn"] == "cuda":
        out = _varlen_cuda(q, k.contiguous(), v.contiguous(), cu_q, cu_k, max_seqlen_q, max_seqlen_k, module.scaling,
                           VARLEN_MODE["repeat_kv"])
    else:
        out = _varlen_reference(q, k, v, cu_q, cu_k, module.scaling)
    return out, None


def check_varlen_kernel(device: str) -> dict[str, Any]:
    """Choose the attention kernel: PyTorch's flash varlen kernel (GQA native, else with K/V repeated) when it
    matches the reference on a mixed batch (a chunk after cached tokens, decodes, a whole prompt), else the
    reference loop on CPU; on a GPU where neither kernel matches, the caller falls back to ``paged|sdpa``."""
    if device != "cuda":
        VARLEN_MODE.update(fn="reference")
        return {"kernel": "reference (CPU)", "max_abs_error": 0.0}
    g = torch.Generator(device="cuda").manual_seed(0)
    qlens, klens = [37, 1, 1, 300], [101, 257, 64, 300]
    cu_q = torch.tensor([0, *np.cumsum(qlens)], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, *np.cumsum(klens)], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(qlens), 32, 128, generator=g, device="cuda").to(torch.bfloat16)
    k = torch.randn(sum(klens), 8, 128, generator=g, device="cuda").to(torch.bfloat16)
    v = torch.randn(sum(klens), 8, 128, generator=g, device="cuda").to(torch.bfloat16)
    ref = _varlen_reference(q, k, v, cu_q, cu_k, 128**-0.5).float()
    tried = {}
    for repeat in (False, True):
        try:
            out = _varlen_cuda(q, k, v, cu_q, cu_k, max(qlens), max(klens), 128**-0.5, repeat).float()
            err = float((out - ref).abs().max())
        except Exception as e:  # noqa: BLE001 - a kernel that refuses the shapes is one we do not use
            tried["repeat_kv" if repeat else "native_gqa"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            continue
        tried["repeat_kv" if repeat else "native_gqa"] = err
        if err < 0.05:
            VARLEN_MODE.update(fn="cuda", repeat_kv=repeat)
            return {"kernel": "aten._flash_attention_forward" + (" (K/V repeated)" if repeat else ""),
                    "max_abs_error": err, "tried": tried}
    return {"kernel": None, "tried": tried}


def build_model(device: str, layers: int | None = None, **shape: Any) -> Any:
    """A Llama-3.1-8B-shaped causal LM with random bf16 weights, made on ``device`` (nothing downloaded);
    ``layers`` and ``shape`` shrink it for a CPU test."""
    from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

    AttentionInterface.register(VARLEN, varlen_paged_attention)
    spec = {**LLAMA31_8B, **shape}
    if layers is not None:
        spec["num_hidden_layers"] = layers
    config = LlamaConfig(**spec, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    return model.eval()


# -- the engine, one iteration at a time -----------------------------------------------------------------------
@dataclass
class Step:
    """One engine iteration: its requests (id, query tokens, KV tokens before it, decoding or not) and times."""

    start: float
    scheduled: float = 0.0  # prepare_next_batch done (scheduling and input tensors)
    computed: float = 0.0  # forward, sampling and the copy of the new tokens to the host done
    end: float = 0.0  # update_batch done
    requests: list[tuple[str, int, int, bool]] = field(default_factory=list)

    def features(self) -> dict[str, float]:
        """The latency model's features: tokens, decode KV, the longest decode context, prefill pairs."""
        prefill = sum(q for _, q, _, dec in self.requests if not dec)
        decodes = [past for _, q, past, dec in self.requests if dec]
        pairs = sum((past + q) ** 2 - past**2 for _, q, past, dec in self.requests if not dec)
        return {"tokens": prefill + len(decodes), "prefill_tokens": prefill, "decode_batch": len(decodes),
                "kv_tokens": sum(decodes), "max_context": max(decodes, default=0), "prefill_pairs": pairs,
                "requests": len(self.requests), "kv_read": sum(past + q for _, q, past, _ in self.requests)}


class HFEngine:
    """transformers' ContinuousBatchProcessor driven one iteration at a time (synchronous: no CUDA graphs,
    no asynchronous double buffering, so that each iteration's CPU and GPU times are separate)."""

    def __init__(self, model: Any, block_size: int, max_batch_tokens: int, max_requests: int,
                 num_blocks: int | None = None) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        cb = ContinuousBatchingConfig(block_size=block_size, max_batch_tokens=max_batch_tokens, num_blocks=num_blocks,
                                      max_requests_per_batch=max_requests, use_cuda_graph=False,
                                      use_async_batching=False, allow_block_sharing=True, scheduler_type="fifo")
        gen = GenerationConfig(do_sample=False, max_new_tokens=16, eos_token_id=-1, pad_token_id=0)
        self.manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
        self.proc = self.manager._create_batch_processor()
        self.manager.batch_processor = self.proc
        self.sched, self.cache = self.proc.scheduler, self.proc.cache
        self.config = self.manager.continuous_batching_config
        self.device = model.device
        self._ids = 0
        self._last: list[Any] = []
        schedule = self.sched.schedule_batch

        def recorded(*args: Any) -> Any:  # the batch as scheduled: query tokens and KV before the step
            out = schedule(*args)
            self._last = [(fs.state.request_id, fs.query_length, fs.state.position_offset,
                           fs.state.generated_len() > 0) for fs in (out[0] or [])]
            return out

        self.sched.schedule_batch = recorded

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {"block_size": self.cache.block_size, "num_blocks": self.cache.num_blocks,
                "max_batch_tokens": self.cache.max_batch_tokens, "max_requests_per_batch": c.max_requests_per_batch,
                "prefix_sharing": self.cache.use_prefix_sharing, "use_cuda_graph": list(c.use_cuda_graph),
                "use_async_batching": c.use_async_batching, "scheduler": c.scheduler_type,
                "safety_margin": self.sched.safety_margin, "max_blocks_per_request": self.cache.max_blocks_per_request}

    def add(self, tokens: list[int], max_new_tokens: int) -> Any:
        from transformers.generation.continuous_batching.requests import RequestState

        self._ids += 1
        state = RequestState(request_id=f"r{self._ids}", initial_tokens=tokens, max_new_tokens=max_new_tokens,
                             eos_token_id=-1)
        self.sched.add_waiting_request(state)
        return state

    def reset(self) -> None:
        """Drop every request (a run cut at its deadline leaves some); the prefix cache's blocks go free."""
        self.proc.reset()
        self._last = []

    def pending(self) -> bool:
        return self.sched.has_pending_requests()

    @torch.no_grad()
    def step(self, clock: Callable[[], float]) -> Step | None:
        """Run one iteration; None when nothing could be scheduled."""
        step = Step(clock())
        if not self.proc.prepare_next_batch():
            return None
        step.scheduled = clock()
        step.requests = self._last
        self.proc._generation_step(self.manager.model)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        step.computed = clock()
        self.proc.update_batch()
        out = self.manager.output_router.output_queue  # finished outputs: read from the states instead
        while not out.empty():
            out.get_nowait()
        step.end = clock()
        return step


# -- hermes_env's runtime in real time ------------------------------------------------------------------------
class RealTimeEngine(Engine):
    """The simulator's event heap run against the wall clock: an event runs when its time has come (late by
    at most the engine iteration in progress, as a real frontend hands work to an engine between
    iterations), and between events the replicas run engine iterations or the loop sleeps."""

    __slots__ = ("replicas", "origin", "steps", "late")

    def __init__(self) -> None:
        super().__init__()
        self.replicas: list[RealReplica] = []
        self.origin = 0.0
        self.steps: list[Step] = []
        self.late: list[float] = []  # how late each event ran (s)

    def clock(self) -> float:
        return time.perf_counter() - self.origin

    def at(self, time_: float, fn: Callable[..., Any], *args: Any) -> None:
        if not math.isfinite(time_):
            raise ValueError(f"cannot schedule an event at {time_}")
        self._seq += 1
        heapq.heappush(self._heap, (time_, self._seq, fn, args))

    def run(self, until: float = math.inf, stop: Callable[[], bool] | None = None) -> None:
        heap, pop = self._heap, heapq.heappop
        self.origin = time.perf_counter()
        with fewer_collections():
            while True:
                now = self.clock()
                while heap and heap[0][0] <= now:
                    t, _, fn, args = pop(heap)
                    self.late.append(now - t)
                    self.now = max(self.now, t)
                    self.events += 1
                    fn(t, *args)
                if stop is not None and stop() or now > until:  # until: wall seconds, a deadline
                    return
                busy = [r for r in self.replicas if r.has_work()]
                for replica in busy:
                    step = replica.step()
                    if step is not None:
                        self.steps.append(step)
                if busy:
                    continue
                if not heap:
                    return
                time.sleep(max(0.0, min(heap[0][0] - self.clock(), 0.05)))


class RealReplica(llm_module.Replica):
    """A replica whose iterations are the real engine's (one :class:`HFEngine` per run)."""

    engine_for_run: HFEngine | None = None  # set by :func:`real_simulation` before the replicas are made

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert RealReplica.engine_for_run is not None
        self.hf = RealReplica.engine_for_run
        self.backend.engine.replicas.append(self)
        self.vocab = int(self.hf.manager.model.config.vocab_size)
        self.inflight: dict[str, tuple[Any, Any]] = {}  # engine id -> (request, engine state)
        self.answers: dict[int, list[int]] = {}  # answer segment uid -> the tokens the engine generated
        self.tokens_made: dict[int, np.ndarray] = {}

    def poke(self, now: float) -> None:
        """New work is in the queue: the run loop takes it before the next iteration."""

    def has_work(self) -> bool:
        return bool(len(self.queue)) or self.hf.pending()

    def segment_tokens(self, seg: Segment) -> np.ndarray | list[int]:
        if seg.uid in self.answers:
            return self.answers[seg.uid]
        got = self.tokens_made.get(seg.uid)
        if got is None or len(got) < seg.size:
            got = self.tokens_made[seg.uid] = np.random.default_rng([seg.uid, 23]).integers(0, self.vocab, seg.size)
        return got

    def prompt(self, r: Any) -> list[int]:
        out: list[int] = []
        for seg in r.chain:
            take = min(seg.size, r.prompt_tokens - seg.start)
            if take > 0:
                out.extend(int(t) for t in self.segment_tokens(seg)[:take])
        if len(out) < r.prompt_tokens:  # no chain (prefix caching off): fresh tokens
            rng = np.random.default_rng([id(r) % 2**32, len(out)])
            out.extend(int(t) for t in rng.integers(0, self.vocab, r.prompt_tokens - len(out)))
        return out[:r.prompt_tokens]

    def step(self) -> Step | None:
        engine = self.backend.engine
        now = engine.clock()
        while len(self.queue):
            r = self.queue.peek(now)
            self.queue.pop(now)
            state = self.hf.add(self.prompt(r), r.output_tokens)
            self.inflight[state.request_id] = (r, state)
        self.queue.end_pass()
        order = self.hf.sched.waiting_requests_order
        if len(order) > 1:  # the application-level policy's order (key, then arrival at the queue)
            ranked = sorted(order, key=lambda rid: (self.inflight[rid][0].key, self.inflight[rid][0].seq))
            order.clear()
            order.extend(ranked)
        step = self.hf.step(engine.clock)
        if step is None:
            return None
        for rid, _, _, _ in step.requests:
            r, state = self.inflight[rid]
            if r.started < 0:
                r.started = r.admitted_at = step.start
        for rid, _, _, _ in step.requests:
            r, state = self.inflight[rid]
            r.generated = state.generated_len()
            if r.generated and r.first_token < 0:
                r.first_token = step.end
            if r.generated >= r.output_tokens:
                del self.inflight[rid]
                r.finished = step.end
                answer = Segment(r.chain[-1] if r.chain else None, r.prompt_tokens, r.output_tokens)
                self.answers[answer.uid] = list(state.generated_tokens)
                r.chain = (*r.chain, answer)
                self.backend.finish(r, step.end)
        self.busy_seconds += step.end - step.start
        self.iterations += 1
        return step


def real_simulation(config: Any, hf: HFEngine, **kwargs: Any) -> Any:
    """A :class:`~hermes_env.sim.Simulation` whose LLM replica is the real engine and whose clock is the
    wall clock (``run(until=T)`` stops it T seconds after it starts, unfinished applications left out)."""
    RealReplica.engine_for_run = hf
    with mock.patch.object(simulator_module, "Engine", RealTimeEngine), \
            mock.patch.object(llm_module, "Replica", RealReplica):
        sim = simulator_module.Simulation(config, **kwargs)
    RealReplica.engine_for_run = None
    return sim
