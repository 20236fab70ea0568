#!/usr/bin/env python3
"""The PyTorch + PEFT reference for `gralora bench step`: the same training step, timed the same way.

MiniLM (the fetched snapshot) with a 2-class head (transformers' BertForSequenceClassification),
the adapter on every linear layer of the blocks (query, key, value, attention.output.dense,
intermediate.dense, output.dense), AdamW (lr 1e-4), cross-entropy on fixed random tokens,
batch 16 × 128, 2 CPU threads; median of the timed steps after warm-up; peak RSS of the process
(and, with --device cuda, the peak of PyTorch's CUDA allocator).

Run by hand (not by CI), after `gralora fetch minilm`:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers peft
    /tmp/refenv/bin/python scripts/bench_peft.py --method gralora,lora,full [--rounds 3] [--json]
Several methods are timed in turns (one step of each per round after each warms up), as
`gralora bench step --method a,b` does, so a slow spell of a shared machine hits all alike.
Alternate it with `gralora bench step` to compare the two in one spell.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch


def build(method, home, rank, k):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(str(home / "minilm"), num_labels=2)
    if method == "full":
        return model
    from peft import GraloraConfig, LoraConfig, get_peft_model

    targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    if method == "lora":
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0,
                         modules_to_save=["classifier"])
    elif method == "gralora":
        cfg = GraloraConfig(r=rank, gralora_k=k, alpha=2 * rank, target_modules=targets,
                            gralora_dropout=0.0, modules_to_save=["classifier"])
    else:
        sys.exit(f"unknown method {method!r}: use lora, gralora or full")
    return get_peft_model(model, cfg)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="gralora")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu, or cuda to time the same step on an NVIDIA GPU")
    p.add_argument("--home", default=os.environ.get("GRALORA_HOME", Path.home() / ".cache/gralora"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    home = Path(a.home)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    methods = a.method.split(",")
    runs = {}
    for m in methods:
        model = build(m, home, a.rank, a.k).to(dev)
        model.train()
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        vocab = model.config.vocab_size
        ids = torch.randint(1000, vocab, (a.batch_size, a.seq_len)).to(dev)
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (a.batch_size,)).to(dev)

        def step(model=model, opt=opt, ids=ids, mask=mask, labels=labels):
            sync()
            t = time.perf_counter()
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            return time.perf_counter() - t

        for _ in range(a.warmup):
            step()
        runs[m] = {"step": step, "times": [], "trainable": sum(q.numel() for q in params),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}
    for _ in range(a.iters):
        for m in methods:
            runs[m]["times"].append(runs[m]["step"]())

    first = None
    for m in methods:
        ms = statistics.median(runs[m]["times"]) * 1000
        first = first or ms
        row = {"impl": f"torch {torch.__version__}", "method": m, "batch_size": a.batch_size,
               "seq_len": a.seq_len, "ms_per_step": round(ms, 1),
               "tokens_per_s": round(a.batch_size * a.seq_len / (ms / 1000), 1),
               "device": a.device, "peak_rss_mb": round(runs[m]["peak_rss_mb"], 1),
               "trainable": runs[m]["trainable"],
               "time_vs_first": round(ms / first, 3)}
        if cuda:
            row["peak_gpu_mb"] = round(runs[m]["peak_gpu_mb"], 1)
        if a.json:
            print(json.dumps(row))
        else:
            print(f"{m:8} {row['ms_per_step']:8.1f} ms/step {row['tokens_per_s']:8.1f} tok/s "
                  f"peak {row['peak_rss_mb']:.0f} MiB  trainable {row['trainable']}  x{row['time_vs_first']}")


if __name__ == "__main__":
    main()
