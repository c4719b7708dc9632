"""Throughput benchmark: naive baseline vs the inference core (fp32) vs fast CPU paths, and gateway latency.

Usage:
    python -m bench.throughput                     # the registry's best model, else an untrained base model
    python -m bench.throughput --model-dir DIR
    python -m bench.throughput --untrained         # speed only: base model (all-MiniLM-L6-v2) + random head

In one run, on the same records (O*NET title + duties from the dev set, ~44 tokens; evaluation data, used
here for speed only):
- naive: Hugging Face `pipeline("feature-extraction")` called one record at a time, then pooling and the head;
- core fp32: `Predictor.predict` (sorted length batches, dynamic padding, no gradients), cache off;
- fast paths: torch int8 dynamic quantisation, ONNX Runtime fp32 and ONNX Runtime int8 (static, batched);
- top-1 of every path on both dev sets and its difference to fp32 (points);
- p50/p99 latency of POST /predict/job through the gateway (real uvicorn processes, API key auth, model cache
  off so every request runs the model) with 1 and 16 concurrent clients;
- fp32's share of the compute bound: model FLOPs per record (2 x multiply-adds of every matmul, from the
  encoder config and the measured mean token count) x records/s, divided by the peak fp32 matmul FLOP/s
  measured here with torch at the same thread count.
Prints a table and writes bench/results/throughput-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

# the OpenMP wait policy of the services (see shared/model/encoders.py), before torch loads, for every path
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.devsets import DEVSETS_DIR
from shared.schemas import JobRecord
from shared.settings import REPO_ROOT, CommonSettings

RESULTS_DIR = Path(__file__).parent / "results"
UNTRAINED_DIR = REPO_ROOT / "var" / "bench" / "untrained-minilm"


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------


def bench_records(n: int) -> list[JobRecord]:
    """The first n distinct O*NET title + duties records (the benchmark's workload)."""
    records, seen = [], set()
    with (DEVSETS_DIR / "onet_jobs_dev.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (row["job_title"], row["duties_description"])
            if key in seen:
                continue
            seen.add(key)
            records.append(
                JobRecord(job_title=row["job_title"], duties_description=row["duties_description"])
            )
            if len(records) == n:
                break
    return records


def build_untrained_model_dir(path: Path) -> Path:
    """The default base model with a random cosine head: same architecture and cost as a trained model."""
    if (path / "model.json").exists():
        return path
    import torch

    from shared.model.classifier import IscoClassifier, load_encoder, save_model_dir
    from shared.model.resources import default_base_model
    from shared.taxonomy import get_taxonomy

    torch.manual_seed(0)
    base = default_base_model()
    encoder, tokenizer = load_encoder(base)
    model = IscoClassifier(encoder, len(get_taxonomy().unit_groups))
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(
        model,
        tokenizer,
        get_taxonomy().unit_groups,
        tmp,
        meta={"version": "untrained-minilm", "base_model": base, "max_length": 128},
    )
    tmp.replace(path)
    return path


def resolve_model(args: argparse.Namespace) -> tuple[Path, bool]:
    if args.model_dir:
        return Path(args.model_dir), False
    if not args.untrained:
        try:
            from shared.registry import best_model_dir

            best = best_model_dir(CommonSettings())
            if best is not None:
                return best, False
        except Exception as exc:  # no registry yet: fall back to the untrained model (speed only)
            print(f"registry unavailable ({type(exc).__name__}); using the untrained base model")
    return build_untrained_model_dir(UNTRAINED_DIR), True


# ---------------------------------------------------------------------------------------------------------
# throughput
# ---------------------------------------------------------------------------------------------------------


def naive_pipeline(model_dir: Path, threads: int) -> Any:
    """A runner: HF feature-extraction pipeline, one record per call, then mean pooling and the head."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import pipeline

    torch.set_num_threads(threads)
    pipe = pipeline("feature-extraction", model=str(model_dir / "encoder"), device="cpu")
    max_len = model_max_length(model_dir)
    weights = load_file(model_dir / "head.safetensors")
    head = F.normalize(weights["head"], dim=-1)
    scale = float(weights["scale"][0])

    def run(batch: list[str]) -> None:
        for text in batch:
            tokens = pipe(
                text, return_tensors=True, tokenize_kwargs={"truncation": True, "max_length": max_len}
            )
            emb = F.normalize(tokens[0].mean(dim=0), dim=-1)
            torch.softmax(scale * emb @ head.T, dim=-1).argmax()

    return run


def interleaved_rates(runners: dict[str, tuple[Any, int]], rounds: int) -> dict[str, dict[str, float]]:
    """Records/s of each runner: one warm-up each, then `rounds` rounds visiting every runner in turn, so
    that load from other processes on a shared machine hits every path alike. Best and median per path."""
    for fn, _ in runners.values():
        fn()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, (fn, n) in runners.items():
            started = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - started))
    return {
        name: {"records_per_s": max(r), "records_per_s_median": statistics.median(r), "rounds": r}
        for name, r in rates.items()
    }


def core_paths() -> dict[str, dict[str, str]]:
    return {
        "core fp32 (torch)": {"backend": "torch", "quantize": "none"},
        "torch int8 dynamic": {"backend": "torch", "quantize": "int8"},
        "onnxruntime fp32": {"backend": "onnx", "quantize": "none"},
        "onnxruntime int8": {"backend": "onnx", "quantize": "int8"},
    }


def load_predictor(model_dir: Path, config: dict[str, str], threads: int) -> Any:
    from shared.predictor import Predictor, PredictorConfig

    return Predictor.load(model_dir, PredictorConfig(cache_size=0, torch_threads=threads, **config))


def devset_top1(predictor: Any) -> dict[str, dict[str, Any]]:
    """Top-1 (an accepted code is the most probable unit group) on each dev set, and the top-1 codes."""
    from bench.devsets import load_devsets

    out = {}
    for name, dev in load_devsets(DEVSETS_DIR).items():
        probs = predictor.probabilities(dev.texts())
        top = [predictor.codes[j] for j in probs.argmax(axis=1)]
        correct = [t == g or t in a for t, g, a in zip(top, dev.gold, dev.accept, strict=True)]
        out[name] = {"top1": float(np.mean(correct)), "n": len(dev), "codes": top}
    return out


# ---------------------------------------------------------------------------------------------------------
# compute bound
# ---------------------------------------------------------------------------------------------------------


def mean_tokens(model_dir: Path, texts: list[str]) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir / "encoder")
    max_len = model_max_length(model_dir)
    return float(np.mean([len(ids) for ids in tok(texts, truncation=True, max_length=max_len)["input_ids"]]))


def model_max_length(model_dir: Path) -> int:
    """Tokens the model reads (model.json), the same truncation for every path."""
    return int(json.loads((model_dir / "model.json").read_text()).get("max_length", 128))


def flops_per_record(model_dir: Path, tokens: float, n_codes: int) -> dict[str, float]:
    """2 x multiply-adds: per layer Q,K,V,O projections (4h^2), the FFN (2 h f), attention scores and the
    weighted sum (2 s h) per token; plus pooling-free head (h x codes) per record. Embedding lookups,
    softmax, layer norms and GELU are ignored (a few percent)."""
    cfg = json.loads((model_dir / "encoder" / "config.json").read_text())
    h, f, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    per_token = layers * 2 * (4 * h * h + 2 * h * f + 2 * tokens * h)
    return {
        "flops_per_token": per_token,
        "flops_per_record": per_token * tokens + 2 * h * n_codes,
        "hidden": h,
        "ffn": f,
        "layers": layers,
    }


def peak_matmul_flops(threads: int, seconds: float = 1.5) -> float:
    """Best fp32 GEMM FLOP/s of torch on this machine, on the encoder's shapes (tokens x 384 x 1536)."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in ((2816, 384, 1536), (2816, 1536, 384), (2816, 384, 384), (2048, 1024, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.matmul(a, b)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 4:
            torch.matmul(a, b)
            count += 1
        best = max(best, 2 * m * k * n * count / (time.perf_counter() - started))
    return best


# ---------------------------------------------------------------------------------------------------------
# gateway latency (real processes)
# ---------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_services(model_dir: Path, config: dict[str, str], threads: int) -> Any:
    """Inference service and gateway as uvicorn processes; yields (gateway URL, inference URL, API key)."""
    import httpx

    from services.gateway.auth import create_api_key
    from shared.db.migrate import upgrade
    from shared.db.session import session_scope

    work = Path(tempfile.mkdtemp(prefix="isco-bench-"))
    db_url = f"sqlite:///{work / 'isco.db'}"
    upgrade(db_url)
    env = {
        **os.environ,
        "ISCO_ENV": "test",
        "ISCO_DATA_DIR": str(work),
        "ISCO_DATABASE_URL": db_url,
        "ISCO_LOG_LEVEL": "WARNING",
    }
    with session_scope(db_url) as session:
        key, _ = create_api_key(session, "bench", env.get("ISCO_SECRET_KEY", "dev-insecure-secret"))
    inf_port, gw_port = _free_port(), _free_port()
    inf_env = {
        **env,
        "ISCO_MODEL_DIR": str(model_dir),
        "ISCO_BACKEND": config["backend"],
        "ISCO_QUANTIZE": config["quantize"],
        "ISCO_RELOAD_INTERVAL_S": "0",
        "ISCO_CACHE_SIZE": "0",
        "ISCO_TORCH_THREADS": str(threads),
    }
    gw_env = {**env, "ISCO_INFERENCE_URL": f"http://127.0.0.1:{inf_port}"}
    uvicorn = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    procs = [
        subprocess.Popen(
            [*uvicorn, "services.inference.app:create_app", "--port", str(inf_port)],
            env=inf_env,
            cwd=REPO_ROOT,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [*uvicorn, "services.gateway.app:create_app", "--port", str(gw_port)],
            env=gw_env,
            cwd=REPO_ROOT,
            stderr=subprocess.DEVNULL,
        ),
    ]
    gateway = f"http://127.0.0.1:{gw_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(gateway + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("services did not become ready")
            time.sleep(0.3)
        yield gateway, f"http://127.0.0.1:{inf_port}", key
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "requests": len(samples),
    }


async def _load(
    base_url: str, key: str, records: list[JobRecord], clients: int, per_client: int, direct: bool = False
) -> dict[str, Any]:
    """`clients` concurrent clients, each sending `per_client` single-record requests one after another.
    direct: POST /v1/predict on the inference service instead of /predict/job on the gateway."""
    import httpx

    path = "/v1/predict" if direct else "/predict/job"

    def body(record: JobRecord) -> dict[str, Any]:
        fields = record.model_dump(exclude_none=True)
        return {"records": [fields]} if direct else fields

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"X-API-Key": key}, limits=limits, timeout=60
    ) as client:

        async def worker(index: int) -> None:
            nonlocal errors
            for i in range(per_client):
                record = records[(index * per_client + i) % len(records)]
                started = time.perf_counter()
                r = await client.post(path, json=body(record))
                latencies.append(time.perf_counter() - started)
                errors += r.status_code != 200

        for i in range(min(10, len(records))):  # warm-up: connections, first forward passes
            await client.post(path, json=body(records[i]))
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        **_percentiles(latencies),
        "errors": errors,
        "clients": clients,
        "records_per_s": len(latencies) / elapsed,
    }


def gateway_latency(
    model_dir: Path, config: dict[str, str], threads: int, records: list[JobRecord], requests: int
) -> dict[str, Any]:
    with running_services(model_dir, config, threads) as (gateway, inference, key):
        direct = asyncio.run(_load(inference, key, records, 1, requests, direct=True))
        single = asyncio.run(_load(gateway, key, records, 1, requests))
        concurrent = asyncio.run(_load(gateway, key, records, 16, max(1, requests * 2 // 16)))
    return {
        "1 client": single,
        "16 clients": concurrent,
        "inference direct, 1 client": direct,
        "inference_config": config,
    }


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir")
    parser.add_argument("--untrained", action="store_true", help="base model with a random head (speed only)")
    parser.add_argument("--records", type=int, default=512, help="records for the throughput runs")
    parser.add_argument("--naive-records", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--latency-requests", type=int, default=200, help="requests for the 1-client run")
    parser.add_argument("--threads", type=int, default=None, help="default: this process's CPU share")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args(argv)

    from shared.model.resources import cpu_share

    threads = args.threads or cpu_share()
    model_dir, untrained = resolve_model(args)
    records = bench_records(args.records)
    texts = [r.job_title + " : " + r.duties_description for r in records]  # naive: no project code at all
    from shared.text import model_input

    model_texts = [model_input(r.job_title, r.duties_description) for r in records]
    tokens = mean_tokens(model_dir, model_texts)
    print(
        f"model {model_dir} ({'untrained: speed only' if untrained else 'trained'}); {len(records)} records, "
        f"{tokens:.1f} tokens on average; {threads} threads; load {os.getloadavg()[0]:.2f}"
    )

    results: dict[str, Any] = {"paths": {}}
    naive_name = "naive HF pipeline, 1 record/call"
    naive_texts = texts[: args.naive_records]
    naive_run = naive_pipeline(model_dir, threads)
    predictors = {name: load_predictor(model_dir, config, threads) for name, config in core_paths().items()}
    # what users run: the services' default backend (PredictorConfig's, the same in the inference service and
    # the workers) on this model, with every signal the model uses
    default = load_predictor(model_dir, {}, threads)
    fast_name = next(n for n, p in predictors.items() if p.scorer.backend == default.scorer.backend)
    results["model"] = default.scorer.describe()
    print(f"model {results['model']['version']}: default {fast_name}; signals {results['model']['signals']}")
    del default
    runners: dict[str, tuple[Any, int]] = {naive_name: (lambda: naive_run(naive_texts), len(naive_texts))}
    for name, predictor in predictors.items():
        runners[name] = (lambda p=predictor: p.predict(records), len(records))
    peak_before = peak_matmul_flops(threads)
    rates = interleaved_rates(runners, args.repeats)
    naive_rate = rates[naive_name]["records_per_s"]
    results["paths"][naive_name] = rates[naive_name]
    for name, config in core_paths().items():
        results["paths"][name] = {
            **rates[name],
            **config,
            "speedup_vs_naive": rates[name]["records_per_s"] / naive_rate,
        }
    for name, r in rates.items():
        print(f"  {name}: {r['records_per_s']:.1f} records/s (median {r['records_per_s_median']:.1f})")

    if not args.skip_accuracy:
        baseline = devset_top1(predictors["core fp32 (torch)"])
        for name, predictor in predictors.items():
            top1 = baseline if name == "core fp32 (torch)" else devset_top1(predictor)
            results["paths"][name]["devsets"] = {
                dev: {
                    "top1": v["top1"],
                    "top1_diff_points": 100 * (v["top1"] - baseline[dev]["top1"]),
                    "agreement_with_fp32": float(
                        np.mean([a == b for a, b in zip(v["codes"], baseline[dev]["codes"], strict=True)])
                    ),
                    "n": v["n"],
                }
                for dev, v in top1.items()
            }
    del predictors

    from shared.taxonomy import get_taxonomy

    flops = flops_per_record(model_dir, tokens, len(get_taxonomy().unit_groups))
    # the best of two measurements, before and after the timed rounds (other processes share the CPUs)
    peak = max(peak_before, peak_matmul_flops(threads))
    fp32_rate = results["paths"]["core fp32 (torch)"]["records_per_s"]
    results["compute_bound"] = {
        **flops,
        "mean_tokens": tokens,
        "peak_fp32_matmul_flops": peak,
        "bound_records_per_s": peak / flops["flops_per_record"],
        "fp32_achieved_flops": fp32_rate * flops["flops_per_record"],
        "fp32_share_of_bound": fp32_rate * flops["flops_per_record"] / peak,
        "how": "FLOPs/record = layers x 2 x (4h^2 + 2hf + 2sh) per real token x mean tokens + 2h x 436; "
        "peak = best torch fp32 matmul FLOP/s on encoder-like shapes at the same thread count; "
        "share = fp32 records/s x FLOPs/record / peak (padding tokens count as waste, not work)",
    }

    results["fast_path"] = fast_name
    if not args.skip_latency:
        config = core_paths()[fast_name]
        results["gateway_latency"] = gateway_latency(
            model_dir, config, threads, records, args.latency_requests
        )

    results["meta"] = {
        "model_dir": str(model_dir),
        "untrained": untrained,
        "records": len(records),
        "naive_records": min(args.naive_records, len(records)),
        "threads": threads,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_end": os.getloadavg(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print_table(results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"throughput-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")
    return results


def print_table(results: dict[str, Any]) -> None:
    naive = results["paths"]["naive HF pipeline, 1 record/call"]["records_per_s"]
    print(f"\n{'path':<36} {'records/s':>10} {'x naive':>8}   top-1 ILO / O*NET (diff vs fp32, points)")
    for name, entry in results["paths"].items():
        marker = " <- fast path" if name == results.get("fast_path") else ""
        dev = entry.get("devsets")
        acc = ""
        if dev:
            acc = " / ".join(f"{d['top1']:.3f} ({d['top1_diff_points']:+.1f})" for d in dev.values())
        rate = entry["records_per_s"]
        print(f"{name:<36} {rate:>10.1f} {rate / naive:>8.2f}   {acc}{marker}")
    cb = results["compute_bound"]
    print(
        f"\ncompute bound: {cb['flops_per_record'] / 1e6:.1f} MFLOP/record ({cb['mean_tokens']:.1f} tokens), "
        f"peak fp32 matmul {cb['peak_fp32_matmul_flops'] / 1e9:.1f} GFLOP/s -> bound "
        f"{cb['bound_records_per_s']:.0f} records/s; fp32 core reaches {100 * cb['fp32_share_of_bound']:.0f}%"
    )
    lat = results.get("gateway_latency")
    if lat:
        print(f"\nPOST /predict/job through the gateway ({lat['inference_config']}):")
        for name in ("1 client", "16 clients", "inference direct, 1 client"):
            r = lat[name]
            print(
                f"  {name:<28} p50 {r['p50_ms']:6.1f} ms   p99 {r['p99_ms']:6.1f} ms   "
                f"{r['records_per_s']:6.1f} req/s   errors {r['errors']}"
            )


if __name__ == "__main__":
    main()
