"""Measure host <-> GPU copies of KV-cache-sized blocks on a real GPU: the cost profile of a host KV tier.

What an offloading engine (vLLM's CPU offload connector, LMCache, SGLang's hierarchical cache) does when it
moves an application's context between GPU and host memory: copies of whole KV blocks between device memory
and page-locked (pinned) host memory on a side CUDA stream, while the GPU keeps computing. Measured here:

* one copy of S bytes, S from 16 KiB (a quarter of one layer's 16-token block of a GQA model) to 1 GiB, each
  direction, pinned and pageable host memory: the median of 20 timed copies (CUDA events on the copy stream)
  after 3 warm-ups; t(S) = latency + S / bandwidth is fitted to the pinned copies of at least 1 MiB;
* many small copies back to back (a block-granular offload: N copies of one layer-block each) against one
  contiguous copy of the same bytes: the per-transfer overhead an engine pays without gathering blocks first;
* both directions at once on two streams (full duplex: the H2D and D2H DMA engines are separate);
* overlap: a bf16 matrix-product loop on the compute stream with and without a 1 GiB copy each way running
  beside it, so that the slowdown of each is measured rather than assumed.

    python scripts/measure_kv_transfer.py --out DIR      # writes DIR/kv_transfer.json and DIR/kv_transfer.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

DEV = "cuda"
KIB, MIB, GIB = 1024, 1024**2, 1024**3
SIZES = [16 * KIB * 4**i for i in range(8)] + [512 * MIB, GIB]  # 16 KiB .. 256 MiB, then 512 MiB, 1 GiB


def timed(fn, stream: torch.cuda.Stream, warmup: int = 3, reps: int = 20) -> float:  # noqa: ANN001
    """Median milliseconds of ``fn`` enqueued on ``stream``."""
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record()
            fn()
            end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def single_copies(stream: torch.cuda.Stream) -> list[dict]:
    rows = []
    biggest = max(SIZES)
    dev = torch.empty(biggest, dtype=torch.uint8, device=DEV)
    pinned = torch.empty(biggest, dtype=torch.uint8, pin_memory=True)
    pageable = torch.empty(biggest, dtype=torch.uint8)
    pinned.fill_(1), pageable.fill_(1)  # touch every page
    for size in SIZES:
        for host_kind, host in (("pinned", pinned), ("pageable", pageable)):
            reps = 20 if size <= 256 * MIB else 5
            h2d = timed(lambda n=size, h=host: dev[:n].copy_(h[:n], non_blocking=True), stream, reps=reps)
            d2h = timed(lambda n=size, h=host: h[:n].copy_(dev[:n], non_blocking=True), stream, reps=reps)
            for direction, ms in (("h2d", h2d), ("d2h", d2h)):
                rows.append({"test": "single", "host": host_kind, "direction": direction, "bytes": size,
                             "copies": 1, "ms": ms, "GBps": size / ms / 1e6})
                print(f"{host_kind:8s} {direction} {size / KIB:10.0f} KiB {ms:9.4f} ms {size / ms / 1e6:7.2f} GB/s",
                      flush=True)
    return rows


def scattered(stream: torch.cuda.Stream, block: int, count: int) -> list[dict]:
    """``count`` copies of ``block`` bytes each against one copy of ``block * count`` bytes."""
    total = block * count
    dev = torch.empty(total, dtype=torch.uint8, device=DEV)
    host = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    rows = []
    for direction in ("h2d", "d2h"):
        dst, src = (dev, host) if direction == "h2d" else (host, dev)

        def many(dst: torch.Tensor = dst, src: torch.Tensor = src) -> None:
            for i in range(count):
                dst[i * block:(i + 1) * block].copy_(src[i * block:(i + 1) * block], non_blocking=True)

        def one(dst: torch.Tensor = dst, src: torch.Tensor = src) -> None:
            dst.copy_(src, non_blocking=True)

        for label, fn in (("blocks", many), ("contiguous", one)):
            ms = timed(fn, stream, warmup=2, reps=10)
            rows.append({"test": f"scatter-{label}", "host": "pinned", "direction": direction, "bytes": total,
                         "copies": count if label == "blocks" else 1, "ms": ms, "GBps": total / ms / 1e6})
            print(f"scatter {label:10s} {direction} {count} x {block / KIB:.0f} KiB: {ms:8.3f} ms "
                  f"{total / ms / 1e6:7.2f} GB/s", flush=True)
    return rows


def duplex() -> dict:
    """1 GiB each way at once on two streams (compare with the single copies of 1 GiB)."""
    a_dev, b_dev = torch.empty(GIB, dtype=torch.uint8, device=DEV), torch.empty(GIB, dtype=torch.uint8, device=DEV)
    a_host = torch.empty(GIB, dtype=torch.uint8, pin_memory=True)
    b_host = torch.empty(GIB, dtype=torch.uint8, pin_memory=True)
    up, down = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()
    results = []
    for _ in range(5):
        t0 = time.perf_counter()
        with torch.cuda.stream(up):
            a_dev.copy_(a_host, non_blocking=True)
        with torch.cuda.stream(down):
            b_host.copy_(b_dev, non_blocking=True)
        torch.cuda.synchronize()
        results.append((time.perf_counter() - t0) * 1e3)
    both_ms = float(np.median(results))
    return {"both_directions_1GiB_each_ms": both_ms, "aggregate_GBps": 2 * GIB / both_ms / 1e6}


def overlap() -> dict:
    """A matrix-product loop with a 1 GiB copy each way beside it: the slowdown of each."""
    x = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    dev = torch.empty(GIB, dtype=torch.uint8, device=DEV)
    host_in = torch.empty(GIB, dtype=torch.uint8, pin_memory=True)
    host_out = torch.empty(GIB, dtype=torch.uint8, pin_memory=True)
    compute, copy_up, copy_down = torch.cuda.current_stream(), torch.cuda.Stream(), torch.cuda.Stream()

    def mm_loop() -> None:
        for _ in range(40):
            x @ y

    def copies() -> None:
        with torch.cuda.stream(copy_up):
            dev.copy_(host_in, non_blocking=True)
        with torch.cuda.stream(copy_down):
            host_out.copy_(dev, non_blocking=True)

    def wall(fn) -> float:  # noqa: ANN001
        fn()
        torch.cuda.synchronize()
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            samples.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(samples))

    mm_alone = wall(mm_loop)
    copies_alone = wall(copies)
    # both: time the matrix products on the compute stream with events while the copies run beside them
    mm_with, copy_with = [], []
    for _ in range(5):
        torch.cuda.synchronize()
        s_mm, e_mm = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s_cp, e_cp = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s_mm.record(compute)
        s_cp.record(copy_up)
        copies()
        copy_down.wait_event(s_cp)
        mm_loop()
        e_mm.record(compute)
        copy_up.wait_stream(copy_down)
        e_cp.record(copy_up)
        torch.cuda.synchronize()
        mm_with.append(s_mm.elapsed_time(e_mm))
        copy_with.append(s_cp.elapsed_time(e_cp))
    return {"matmul_loop_alone_ms": mm_alone, "matmul_loop_with_copies_ms": float(np.median(mm_with)),
            "copies_alone_ms": copies_alone, "copies_with_matmul_ms": float(np.median(copy_with)),
            "matmul_slowdown": float(np.median(mm_with)) / mm_alone}


def fit(rows: list[dict], direction: str) -> dict:
    pts = [(r["bytes"], r["ms"]) for r in rows if r["test"] == "single" and r["host"] == "pinned"
           and r["direction"] == direction and r["bytes"] >= MIB]
    size, ms = np.array(pts, dtype=float).T
    slope, intercept = np.polyfit(size, ms, 1)
    small = [r["ms"] for r in rows if r["test"] == "single" and r["host"] == "pinned" and r["direction"] == direction
             and r["bytes"] == min(SIZES)]
    pred = intercept + slope * size
    return {"bandwidth_GBps": 1.0 / slope / 1e6, "latency_us_fit": intercept * 1e3,
            "smallest_copy_us": small[0] * 1e3, "max_rel_error_fit": float(np.max(np.abs(pred - ms) / ms))}


def environment() -> dict:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,pcie.link.gen.max,"
                          "pcie.link.width.max", "--format=csv,noheader"], capture_output=True, text=True).stdout
    return {"gpu": torch.cuda.get_device_properties(0).name, "nvidia_smi": smi.strip(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(json.dumps(env), flush=True)
    stream = torch.cuda.Stream()
    rows = single_copies(stream)
    # one layer's 16-token block of a GQA model with 8 KV heads of 128 (K and V, bf16): 64 KiB; 2,048 of them
    rows += scattered(stream, 64 * KIB, 2048)
    result = {"environment": env, "h2d": fit(rows, "h2d"), "d2h": fit(rows, "d2h"), "duplex": duplex(),
              "overlap": overlap()}
    print(json.dumps(result, indent=1), flush=True)
    (args.out / "kv_transfer.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(args.out / "kv_transfer.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
