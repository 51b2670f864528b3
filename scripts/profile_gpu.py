"""Measure the iteration latency of a dense transformer (Llama-3-8B's or Qwen2.5-32B's shape) on a real GPU.

Builds the model in plain torch, bf16, with random weights (nothing is downloaded), and times what a
continuous-batching engine runs each iteration:

* prefill of one prompt of T tokens (causal attention, K/V written to the cache, logits for the last
  token only);
* a batched decode step of B sequences, each attending to C cached tokens;
* mixed iterations: a prefill chunk together with a decode batch in one forward pass (the linear layers
  see all tokens at once, attention runs per part), held out to validate the additive latency model.

Every shape is timed twice: replaying a captured CUDA graph (per-step launch overhead removed, as a
serving engine runs it) and plainly in eager mode. Each figure is the median of 20 timed runs after 3
warm-ups (of 5 runs after 1 for shapes slower than half a second), timed with CUDA events. The copy
bandwidth and bf16 matrix rate are measured first, so that each decode time can be checked against its
memory floor (all weights read once per step).

    python scripts/profile_gpu.py --out DIR          # writes DIR/profile.csv and DIR/environment.json
    python scripts/profile_gpu.py --long --out DIR   # and prompts and contexts of 12k to 131k tokens
    python scripts/profile_gpu.py --model qwen2.5-32b --long --skip-graph-above-ms 2000 --out DIR

``--model`` picks the architecture (:data:`MODELS`: layer count, widths, heads, vocabulary; Qwen2's q/k/v
biases are left out: an element-wise add per token, nil against the products). ``--skip-graph-above-ms``
times shapes slower than that per run in eager mode only (3 runs): CUDA graphs remove launch overhead,
which is nil there, and a 32B model's 98k-token prefill would otherwise take two minutes a shape.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# hidden, layers, heads, KV heads, head dim, intermediate, vocabulary, RoPE theta, RMSNorm eps, and the bound on
# B * C cached tokens of the decode shapes (the K/V they allocate must fit beside the weights)
MODELS = {
    # Meta, config.json of Meta-Llama-3-8B: 16 GB of weights, 128 KiB of K/V per token
    "llama3-8b": (4096, 32, 32, 8, 128, 14336, 128256, 500000.0, 1e-5, 262_144),
    # Qwen, config.json of Qwen2.5-32B: 65.5 GB of weights, 256 KiB of K/V per token (48 GiB at the bound)
    "qwen2.5-32b": (5120, 64, 40, 8, 128, 27648, 152064, 1000000.0, 1e-6, 196_608),
}
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB, ROPE_THETA, EPS, MAX_CACHED_TOKENS = MODELS["llama3-8b"]
DTYPE = torch.bfloat16
DEV = "cuda"

PREFILL_TOKENS = [16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]
DECODE_BATCH = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
DECODE_CONTEXT = [128, 512, 1024, 2048, 4096, 8192]
MIXED = [(256, 8, 1024), (256, 32, 1024), (1024, 16, 2048), (512, 64, 512), (2048, 32, 1024), (128, 128, 2048)]
# Long contexts (--long): the same method beyond the first profile's 8,192 tokens, up to Llama-3.1's
# 131,072-token context. They are measured after all the shapes above, so that a run cut short keeps those.
LONG_PREFILL_TOKENS = [12288, 16384, 24576, 32768, 49152, 65536, 131072]
LONG_DECODE_CONTEXT = [16384, 32768, 65536, 131072]
LONG_MIXED = [(2048, 4, 32768), (8192, 8, 16384), (16384, 16, 4096), (4096, 2, 65536)]
MAX_POSITION = 131_072 + 1
SLOW_MS = 500.0  # shapes slower than this per run are timed 5 times (1 warm-up) instead of 20 (3 warm-ups)
SKIP_GRAPH_MS = float("inf")  # shapes slower than this are timed in eager mode only (--skip-graph-above-ms)


def randn(*shape: int, scale: float = 0.02) -> torch.Tensor:
    return (torch.randn(*shape, device=DEV, dtype=torch.float32) * scale).to(DTYPE)


class Model:
    def __init__(self) -> None:
        self.embed = randn(VOCAB, HIDDEN)
        self.layers = []
        for _ in range(LAYERS):
            self.layers.append({
                "ln1": torch.ones(HIDDEN, device=DEV, dtype=DTYPE),
                "wqkv": randn(HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD_DIM),
                "wo": randn(HEADS * HEAD_DIM, HIDDEN),
                "ln2": torch.ones(HIDDEN, device=DEV, dtype=DTYPE),
                "w13": randn(HIDDEN, 2 * INTERMEDIATE),
                "w2": randn(INTERMEDIATE, HIDDEN),
            })
        self.norm = torch.ones(HIDDEN, device=DEV, dtype=DTYPE)
        self.lm_head = randn(HIDDEN, VOCAB)
        inv = 1.0 / (ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, device=DEV, dtype=torch.float32) / HEAD_DIM))
        pos = torch.arange(MAX_POSITION, device=DEV, dtype=torch.float32)
        freqs = torch.outer(pos, inv)
        self.cos, self.sin = freqs.cos().to(DTYPE), freqs.sin().to(DTYPE)

    def weight_bytes(self) -> int:
        per_layer = sum(t.numel() for t in self.layers[0].values()) * LAYERS
        return 2 * (per_layer + self.embed.numel() + self.lm_head.numel() + HIDDEN)

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x: (..., S, D) with positions pos (S,)
        cos, sin = self.cos[pos], self.sin[pos]
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    @staticmethod
    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(DTYPE) * w

    def forward(self, tokens: torch.Tensor, prefill: int, caches: list, decode_ctx: int, decode_batch: int,
                prefill_cache: list | None) -> torch.Tensor:
        """One engine iteration: ``prefill`` prompt tokens of one sequence followed by ``decode_batch``
        decode tokens, each sequence with ``decode_ctx`` cached tokens. Returns last-token logits."""
        x = self.embed[tokens]  # (N, H)
        p, b = prefill, decode_batch
        for i, L in enumerate(self.layers):
            h = self.rms(x, L["ln1"])
            qkv = h @ L["wqkv"]
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
            outs = []
            if p:
                pos = torch.arange(p, device=DEV)
                qp = self.rope(q[:p].view(p, HEADS, HEAD_DIM).transpose(0, 1), pos)
                kp = self.rope(k[:p].view(p, KV_HEADS, HEAD_DIM).transpose(0, 1), pos)
                vp = v[:p].view(p, KV_HEADS, HEAD_DIM).transpose(0, 1)
                prefill_cache[i][0][:, :p].copy_(kp)
                prefill_cache[i][1][:, :p].copy_(vp)
                rep = HEADS // KV_HEADS
                o = F.scaled_dot_product_attention(qp[None], kp.repeat_interleave(rep, 0)[None],
                                                   vp.repeat_interleave(rep, 0)[None], is_causal=True)
                outs.append(o[0].transpose(0, 1).reshape(p, HEADS * HEAD_DIM))
            if b:
                kc, vc = caches[i]  # (B, KV, C + 1, D)
                pos = torch.full((1,), decode_ctx, device=DEV, dtype=torch.long)
                qd = self.rope(q[p:].view(b, HEADS, 1, HEAD_DIM), pos)
                kd = self.rope(k[p:].view(b, KV_HEADS, 1, HEAD_DIM), pos)
                kc[:, :, decode_ctx:].copy_(kd)
                vc[:, :, decode_ctx:].copy_(v[p:].view(b, KV_HEADS, 1, HEAD_DIM))
                # grouped-query decode: the 4 query heads of a group act as 4 queries of one KV head
                qg = qd.view(b, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
                o = F.scaled_dot_product_attention(qg, kc, vc)
                outs.append(o.reshape(b, HEADS * HEAD_DIM))
            attn = outs[0] if len(outs) == 1 else torch.cat(outs)
            x = x + attn @ L["wo"]
            h = self.rms(x, L["ln2"])
            gate, up = (h @ L["w13"]).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ L["w2"]
        last = []
        if p:
            last.append(x[p - 1:p])
        if b:
            last.append(x[p:])
        return self.rms(torch.cat(last), self.norm) @ self.lm_head


def time_fn(fn, warmup: int = 3, reps: int = 20) -> list[float]:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)


def measure(model: Model, prefill: int, batch: int, ctx: int, eager_reps: int) -> dict:
    n = prefill + batch
    tokens = torch.randint(0, VOCAB, (n,), device=DEV)
    caches = [(randn(batch, KV_HEADS, ctx + 1, HEAD_DIM, scale=1.0), randn(batch, KV_HEADS, ctx + 1, HEAD_DIM, scale=1.0))
              for _ in range(LAYERS)] if batch else []
    pcache = [(torch.empty(KV_HEADS, prefill, HEAD_DIM, device=DEV, dtype=DTYPE),
               torch.empty(KV_HEADS, prefill, HEAD_DIM, device=DEV, dtype=DTYPE)) for _ in range(LAYERS)] if prefill else None

    def step() -> torch.Tensor:
        return model.forward(tokens, prefill, caches, ctx, batch, pcache)

    with torch.inference_mode():
        first = time_fn(step, warmup=1, reps=1)[0]
        if first > SKIP_GRAPH_MS:
            eager = time_fn(step, warmup=0, reps=3)
            med = eager[1]
            return {"prefill_tokens": prefill, "decode_batch": batch, "decode_context": ctx, "graph_ms": med,
                    "graph_p10_ms": eager[0], "graph_p90_ms": eager[2], "eager_ms": med}
        slow = first > SLOW_MS  # a long prefill: launch overhead is nil, and 20 runs would take minutes
        eager = time_fn(step, warmup=0 if slow else 1, reps=2 if slow else eager_reps)
        torch.cuda.empty_cache()  # the graph's private pool needs the room the eager runs cached
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(1 if slow else 2):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graphed = time_fn(graph.replay, warmup=1 if slow else 3, reps=5 if slow else 20)
        del graph
    del caches, pcache
    torch.cuda.empty_cache()
    med = lambda t: t[len(t) // 2]  # noqa: E731
    return {"prefill_tokens": prefill, "decode_batch": batch, "decode_context": ctx,
            "graph_ms": med(graphed), "graph_p10_ms": graphed[len(graphed) // 10],
            "graph_p90_ms": graphed[9 * len(graphed) // 10], "eager_ms": med(eager)}


def ceilings() -> dict:
    a = torch.empty(2 * 1024**3, device=DEV, dtype=torch.uint8)
    b = torch.empty_like(a)
    copy_ms = time_fn(lambda: b.copy_(a), reps=10)[5]
    del a, b
    x, y = randn(8192, 8192, scale=1.0), randn(8192, 8192, scale=1.0)
    mm_ms = time_fn(lambda: x @ y, reps=10)[5]
    del x, y
    torch.cuda.empty_cache()
    return {"copy_GBps_read_plus_write": 2 * 2 * 1024**3 / copy_ms / 1e6,
            "bf16_matmul_TFLOPs": 2 * 8192**3 / mm_ms / 1e9}


def environment() -> dict:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "nvidia_smi": smi, "multiprocessors": props.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="a few shapes only, to check the script")
    parser.add_argument("--long", action="store_true", help="add prompts and contexts of 12k to 131k tokens")
    parser.add_argument("--model", choices=sorted(MODELS), default="llama3-8b")
    parser.add_argument("--skip-graph-above-ms", type=float, default=float("inf"))
    parser.add_argument("--max-prefill", type=int, default=131_072, help="leave out longer prefills")
    parser.add_argument("--max-context", type=int, default=131_072, help="leave out longer decode contexts")
    parser.add_argument("--min-size", type=int, default=0,
                        help="leave out shapes whose prefill and decode context are both shorter (a run that "
                             "only adds the long shapes to an earlier one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    global HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB, ROPE_THETA, EPS, MAX_CACHED_TOKENS
    global SKIP_GRAPH_MS
    HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB, ROPE_THETA, EPS, MAX_CACHED_TOKENS = \
        MODELS[args.model]
    SKIP_GRAPH_MS = args.skip_graph_above_ms
    torch.manual_seed(0)
    env = environment()
    env.update(model=args.model, skip_graph_above_ms=SKIP_GRAPH_MS)
    env.update(ceilings())
    model = Model()
    env["weight_bytes"] = model.weight_bytes()
    # HBM moves read and written bytes at one shared rate, so weights are read at the copy's total rate
    env["decode_floor_ms"] = env["weight_bytes"] / env["copy_GBps_read_plus_write"] / 1e6
    print(json.dumps(env, indent=1), flush=True)
    (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")  # again at the end, with the count
    shapes = [(t, 0, 0, "prefill") for t in PREFILL_TOKENS]
    shapes += [(0, b, c, "decode") for b in DECODE_BATCH for c in DECODE_CONTEXT if b * c <= MAX_CACHED_TOKENS]
    shapes += [(p, b, c, "mixed") for p, b, c in MIXED]
    if args.long:
        shapes += [(t, 0, 0, "prefill") for t in LONG_PREFILL_TOKENS]
        shapes += [(0, b, c, "decode") for c in LONG_DECODE_CONTEXT for b in DECODE_BATCH if b * c <= MAX_CACHED_TOKENS]
        shapes += [(p, b, c, "mixed") for p, b, c in LONG_MIXED]
    shapes = [s for s in shapes if s[0] <= args.max_prefill and s[2] <= args.max_context
              and max(s[0], s[2]) >= args.min_size]
    if args.quick:
        shapes = [shapes[0], shapes[len(PREFILL_TOKENS)], shapes[-1]]
    rows = []
    t0 = time.time()
    with open(args.out / "profile.csv", "w", newline="") as fh:
        writer = None
        for p, b, c, kind in shapes:
            row = {"kind": kind, **measure(model, p, b, c, eager_reps=5)}
            rows.append(row)
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                writer.writeheader()
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
            fh.flush()
            floor = env["decode_floor_ms"]
            print(f"{kind:7s} P={p:5d} B={b:3d} C={c:5d} graph {row['graph_ms']:8.3f} ms eager {row['eager_ms']:8.3f} ms"
                  f" (floor {floor:.2f}; {time.time() - t0:.0f}s)", flush=True)
    env["shapes"] = len(rows)
    (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
    assert all(math.isfinite(r["graph_ms"]) for r in rows)


if __name__ == "__main__":
    main()
