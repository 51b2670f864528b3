"""End to end on a real GPU (issue 23, item 2): profile a real continuous-batching engine, then replay an
Azure trace segment and the Hermes-like mix through hermes_env's runtime against it, at three loads.

    python scripts/realgpu/run_e2e.py --out DIR                 # on the GPU machine (about 8 minutes)
    python scripts/realgpu/run_e2e.py --out DIR --tiny          # the whole pipeline on CPU with a tiny model

Everything runs in one process with the model loaded once (hf_engine.py says how the engine and the runtime
fit together):

1. **Profile.** Iterations of chosen shapes run through the engine itself (prompts alone, decode batches of
   1 to 256 requests over 128 to 4,096-token contexts, with the prefill iterations that fill them): each
   iteration's forward time (forward pass, sampling, copy of the new tokens to the host) and the engine's
   time between forward passes (scheduling, input tensors, output handling). The latency model
   (hermes_env/cluster/latency.py) is fitted to the forward times, its scheduler-overhead terms (per
   iteration, per request) to the rest; written as ``profile.yaml``.
2. **Capacity.** With that profile, the simulator finds each workload's capacity by the doubling rule
   (scripts/trace_capacity.py's), and the runs use three fractions of it (:data:`LOADS`).
3. **Runs.** The Azure segment (FCFS: every request is one stage) and the Hermes-like mix under FCFS and
   Gittins at each load, in real time; per request: arrival at the engine, admission, first token, finish;
   per application: arrival, completion; per iteration: composition and times.

Outputs (DIR): ``environment.json`` (device, versions, engine settings, kernel check, capacities),
``profile.yaml``, ``runs.json`` (every run's records; written after each run), ``log.txt`` is the caller's.
scripts/realgpu/compare.py simulates the same runs with the same seeds and compares.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import experiments  # noqa: E402
import hf_engine  # noqa: E402

from hermes_env.cluster.latency import IterationLatency, fit_iterations  # noqa: E402

LOADS = (0.3, 0.75, 0.95)  # fractions of the simulated capacity: light, ~75%, near saturation
SEED = 0


def environment(device: str) -> dict[str, Any]:
    import transformers

    env = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
           "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    return env


def run_until_done(hf: hf_engine.HFEngine, states: list[Any], clock: Any) -> list[hf_engine.Step]:
    steps = []
    while any(s.generated_len() < s.max_new_tokens for s in states):
        step = hf.step(clock)
        if step is None:
            raise RuntimeError("the engine scheduled nothing with requests pending")
        steps.append(step)
    return steps


def profile_shapes(tiny: bool) -> list[tuple[str, int, int, int]]:
    """(kind, requests, prompt, new tokens): prompts alone, then decode batches over equal contexts."""
    if tiny:
        return [("prefill", 1, 64, 2), ("prefill", 1, 200, 2), ("decode", 4, 32, 4), ("decode", 8, 64, 4)]
    shapes = [("prefill", 1, t, 2) for t in (64, 256, 512, 1024, 2048, 4096, 8192) for _ in range(2)]
    shapes += [("decode", b, c, 6) for c in (128, 1024, 4096) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)
               if b * c <= 131_072]
    return shapes


def profile(hf: hf_engine.HFEngine, tiny: bool, vocab: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(SEED)
    rows = []
    t0 = time.perf_counter()
    for kind, batch, prompt, new in profile_shapes(tiny):
        states = [hf.add([int(t) for t in rng.integers(0, vocab, prompt)], new) for _ in range(batch)]
        for step in run_until_done(hf, states, time.perf_counter):
            rows.append({"shape": f"{kind}:{batch}x{prompt}", **step_row(step)})
        print(f"profile {kind:7s} B={batch:3d} prompt={prompt:5d}: {len(rows)} iterations, "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def step_row(step: hf_engine.Step) -> dict[str, Any]:
    return {**step.features(), "start": step.start, "prepare_s": step.scheduled - step.start,
            "forward_s": step.computed - step.scheduled, "update_s": step.end - step.computed}


def fit(rows: list[dict[str, Any]], name: str) -> tuple[IterationLatency, dict[str, Any]]:
    """The engine's time between forward passes (preparation and update) against a constant, a term per
    request and one per KV token read (least squares, >= 0): the first two are the profile's overhead terms;
    the latency model is fitted to the rest of each iteration's time (its forward pass and the KV-proportional
    CPU work, which the index lists of every token read make; it falls into the per-token terms)."""
    from scipy.optimize import nnls

    x = np.array([[r["tokens"], r["kv_tokens"], r["prefill_pairs"], r["max_context"]] for r in rows], dtype=float)
    forward = np.array([r["forward_s"] for r in rows])
    overhead = np.array([r["prepare_s"] + r["update_s"] for r in rows])
    a = np.array([[1.0, r["requests"], r["kv_read"]] for r in rows])
    coef = nnls(a, overhead)[0]
    total = forward + overhead
    rest = total - coef[0] - coef[1] * a[:, 1]
    theta, predicted = fit_iterations(x, rest)
    err = np.abs(predicted + coef[0] + coef[1] * a[:, 1] - total) / total
    report = {"iterations": len(rows), "mean_rel_error": round(float(err.mean()), 4),
              "max_rel_error": round(float(err.max()), 4),
              "overhead_per_iteration_s": float(coef[0]), "overhead_per_request_s": float(coef[1]),
              "overhead_per_kv_token_read_s": float(coef[2]),
              "overhead_share_of_iteration": round(float(overhead.sum() / total.sum()), 4)}
    model = IterationLatency(*(float(v) for v in theta), scheduler_overhead=float(coef[0]),
                             scheduler_overhead_per_request=float(coef[1]), name=name,
                             source="scripts/realgpu/run_e2e.py: transformers continuous batching, iterations "
                                    "through the engine itself", errors=report)
    return model, report


def write_profile(model: IterationLatency, path: Path) -> None:
    import yaml

    spec = {k: v for k, v in model.to_dict().items() if k != "derived"}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def real_run(hf: hf_engine.HFEngine, kind: str, policy: str, load: float, rate: float, span: float,
             profile_path: str, deadline: float) -> dict[str, Any]:
    cfg = experiments.experiment(kind, rate, span, profile_path, hf.describe())
    hf.reset()
    sim = hf_engine.real_simulation(cfg, hf, scheduler=policy, seed=SEED)
    sim.request_log = []
    t0 = time.perf_counter()
    result = sim.run(until=deadline)
    wall = time.perf_counter() - t0
    engine = sim.engine
    requests = [{"app": r.app.id, "stage": r.run_index, "copy": r.copy, "prompt": r.prompt_tokens,
                 "output": r.output_tokens, "enqueued": r.first_enqueued, "started": r.started,
                 "first_token": r.first_token, "finished": r.finished}
                for r in sim.request_log if r.output_tokens]
    apps = [{"app": a.id, "template": a.template, "arrival": a.arrival, "completion": a.completion,
             "failed": a.failed} for a in sim.completed]
    late = np.array(engine.late) if engine.late else np.zeros(1)
    out = {"kind": kind, "policy": policy, "load": load, "rate": rate, "span": span, "seed": SEED,
           "applications": cfg.workload.num_applications, "ended": len(apps), "wall_s": wall,
           "summary": {k: result.summary[k] for k in ("jct", "completed", "failed", "cold_starts")},
           "event_lateness_s": {"mean": float(late.mean()), "p95": float(np.quantile(late, 0.95)),
                                "max": float(late.max())},
           "apps": apps, "requests": requests, "steps": [step_row(s) for s in engine.steps]}
    mean = result.summary["jct"].get("mean", float("nan"))
    print(f"run {kind:6s} {policy:8s} load {load:.2f} rate {rate:.3g}/s: {len(apps)}/"
          f"{cfg.workload.num_applications} ended in {wall:.0f}s, JCT mean {mean:.3f}s, "
          f"{len(engine.steps)} iterations", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on CPU, tiny loads: checks the pipeline")
    parser.add_argument("--span", type=float, default=20.0, help="seconds of arrivals per run")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds after which a run stops")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for everything; later runs are skipped")
    parser.add_argument("--plan", default="", help="runs to make, as kind:policy:load,... (default: all)")
    parser.add_argument("--capacity", default="", help="azure=R,hermes=R: capacities to use (no search)")
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    env = environment(device)
    env["kernel_check"] = hf_engine.check_varlen_kernel(device)
    shape = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                 vocab_size=1000) if args.tiny else {}
    model = hf_engine.build_model(device, layers=2 if args.tiny else None, **shape)
    attn = hf_engine.VARLEN if env["kernel_check"]["kernel"] else "paged|sdpa"
    model.config._attn_implementation = attn
    env["attention"] = attn
    env["model"] = {"shape": "Llama-3.1-8B" if not args.tiny else "tiny", "parameters": sum(p.numel() for p in
                    model.parameters()), "dtype": str(next(model.parameters()).dtype), "weights": "random"}
    hf = hf_engine.HFEngine(model, block_size=256, max_batch_tokens=8192 if not args.tiny else 256,
                            max_requests=256 if not args.tiny else 32,
                            num_blocks=None if device == "cuda" else 400)
    env["engine"] = hf.describe()
    print(json.dumps(env, indent=1), flush=True)
    (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")

    vocab = model.config.vocab_size
    run_until_done(hf, [hf.add(list(range(1, 300)), 4) for _ in range(4)], time.perf_counter)  # warm-up
    rows = profile(hf, args.tiny, vocab)
    model_fit, report = fit(rows, "llama3-8b-h200-hf" if not args.tiny else "tiny-cpu")
    profile_path = args.out / "profile.yaml"
    write_profile(model_fit, profile_path)
    env["profile_fit"] = report
    print("fit", json.dumps(report), flush=True)

    # a Gittins simulation first: the PDGraph tables it needs are built here, not inside a timed run
    experiments.Simulation(experiments.experiment("hermes", 1.0, 40, str(profile_path), hf.describe()),
                           scheduler="gittins", seed=SEED).run()
    span = args.span
    given = {k: float(v) for k, v in (item.split("=") for item in args.capacity.split(",") if item)}
    env["capacity"] = given or {kind: experiments.capacity(kind, str(profile_path), hf.describe(), 6 * span, light)
                                for kind, light in (("azure", 1.0), ("hermes", 0.2))}
    print("capacity", env["capacity"], f"{time.perf_counter() - started:.0f}s", flush=True)
    (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")

    plan = [("azure", "fcfs", load) for load in LOADS]
    plan += [("hermes", policy, load) for load in LOADS for policy in ("fcfs", "gittins")]
    if args.plan:
        plan = [(k, p, float(x)) for k, p, x in (item.split(":") for item in args.plan.split(","))]
    runs, skipped = [], []
    for kind, policy, load in plan:
        left = args.budget - (time.perf_counter() - started)
        if left < args.deadline + 5:
            skipped.append(f"{kind}:{policy}:{load}")
            continue
        rate = load * env["capacity"][kind]
        runs.append(real_run(hf, kind, policy, load, rate, span, str(profile_path), args.deadline))
        (args.out / "runs.json").write_text(json.dumps({"environment": env, "runs": runs, "profile_rows": rows,
                                                        "skipped": skipped}) + "\n")
    env["skipped"] = skipped
    env["total_s"] = time.perf_counter() - started
    (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
    (args.out / "runs.json").write_text(json.dumps({"environment": env, "runs": runs, "profile_rows": rows,
                                                    "skipped": skipped}) + "\n")
    print(f"done in {env['total_s']:.0f}s; skipped {skipped}", flush=True)


if __name__ == "__main__":
    main()
