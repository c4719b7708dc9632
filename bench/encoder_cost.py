"""What training a bigger encoder costs here: time per optimizer step and peak memory of the classifier
(IscoClassifier, the trainer's AdamW step) on a randomly initialised encoder of a given architecture size,
because real roberta-base weights are not available offline. The cost does not depend on the weights' values.

Usage:
    python -m bench.encoder_cost                          # roberta-base size, 128 tokens, batch 8
    python -m bench.encoder_cost --batch 16 --tokens 64 --checkpointing
    python -m bench.encoder_cost --batch 32 --tokens 24 --bf16   # bf16 autocast, as `cpu_bf16: true` trains

Each variant runs in a fresh process (peak RSS is per process): one warm-up step, then --steps timed steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_run(
    batch: int, tokens: int, steps: int, checkpointing: bool, threads: int | None, bf16: bool = False
) -> dict[str, float]:
    import torch
    from transformers import RobertaConfig, RobertaModel

    from shared.model.classifier import IscoClassifier
    from shared.model.resources import cpu_share

    torch.set_num_threads(threads or cpu_share())
    torch.manual_seed(0)
    config = RobertaConfig(  # roberta-base: 12 layers, 768 hidden, 12 heads, 3072 FFN, 50265 tokens
        vocab_size=50265, max_position_embeddings=514, pad_token_id=1, type_vocab_size=1
    )
    model = IscoClassifier(RobertaModel(config, add_pooling_layer=False), 436)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.encoder.get_input_embeddings().weight.requires_grad_(False)  # as the profiles do
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    ids = torch.randint(3, config.vocab_size, (batch, tokens))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 436, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    return {
        "seconds_per_step": round(seconds, 2),
        "records_per_s": round(batch / seconds, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--checkpointing", action="store_true", help="only with gradient checkpointing")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the trainer's cpu_bf16)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(
            json.dumps(
                one_run(args.batch, args.tokens, args.steps, args.checkpointing, args.threads, args.bf16)
            )
        )
        return
    import os

    for checkpointing in [True] if args.checkpointing else [False, True]:
        cmd = [sys.executable, "-m", "bench.encoder_cost", "--child", "--batch", str(args.batch)]
        cmd += ["--tokens", str(args.tokens), "--steps", str(args.steps)]
        cmd += (
            ["--checkpointing"] * checkpointing
            + ["--bf16"] * args.bf16
            + (["--threads", str(args.threads)] if args.threads else [])
        )
        out = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        print(
            f"roberta-base size, batch {args.batch} x {args.tokens} tokens, checkpointing {checkpointing}, "
            f"bf16 {args.bf16}: "
            f"{out['seconds_per_step']} s/step ({out['records_per_s']} records/s), peak RSS "
            f"{out['peak_rss_gib']} GiB, {out['parameters_m']}M parameters; load {os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
