#!/usr/bin/env python3
"""PEFT-made adapter fixtures for tests/peft.rs, and the check that PEFT reads gralora's files.

Run by hand (not by CI), after `gralora fetch minilm`:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers peft
    /tmp/refenv/bin/python scripts/peft_fixtures.py make  [GRALORA_HOME]
        -> tests/fixtures/peft/<name>/{adapter_config.json, adapter_model.safetensors, outputs.json}
    /tmp/refenv/bin/python scripts/peft_fixtures.py merged DIR FIXTURE
        -> loads a `gralora merge` output DIR with transformers and compares its embeddings with
           tests/fixtures/peft/FIXTURE/outputs.json (PEFT's unmerged outputs)
    /tmp/refenv/bin/python scripts/peft_fixtures.py check DIR [GRALORA_HOME]
        -> loads a gralora-saved adapter DIR (with DIR/outputs.json written by gralora) in PEFT and
           prints PEFT's embeddings against gralora's (cosine, max abs error)
    /tmp/refenv/bin/python scripts/peft_fixtures.py exported DIR FIXTURE [GRALORA_HOME]
        -> loads DIR, written by `gralora export --adapter tests/fixtures/peft/FIXTURE --to lora`,
           through PEFT's plain LoRA path and compares its embeddings with PEFT's own GraLoRA
           outputs for FIXTURE (tests/fixtures/peft/FIXTURE/outputs.json); fails above 1e-5
    /tmp/refenv/bin/python scripts/peft_fixtures.py smollm2 OUTDIR GRALORA_BINARY [GRALORA_HOME]
        -> the same for a decoder, after `gralora fetch smollm2`: PEFT makes a GraLoRA adapter
           (B non-zero) on SmolLM2 as transformers loads it from the GGUF file, `gralora export
           --to lora` converts it, and PEFT's LoRA path must give the GraLoRA logits (max abs
           error, and relative to the largest logit)

Adapters use init_weights=False (B non-zero), so a wrong layout cannot pass by accident.
The model is MiniLM as Hugging Face `BertModel`; outputs are mean-pooled, L2-normalised embeddings.
"""
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

SENTENCES = [
    "A man is playing a guitar on stage.",
    "The stock market fell sharply on Tuesday.",
    "Rust programs are compiled ahead of time.",
]
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "peft"


def home(i):
    return Path(sys.argv[i] if len(sys.argv) > i else os.environ.get("GRALORA_HOME", Path.home() / ".cache/gralora"))


def embed(model, tok):
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=-1)


def configs():
    from peft import GraloraConfig, LoraConfig

    return {
        "lora": LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False),
        "lora_rslora_patterns": LoraConfig(
            r=4, lora_alpha=8, use_rslora=True, target_modules=["query", "key", "dense"],
            rank_pattern={"layer.2.attention.self.query": 8}, alpha_pattern={"layer.3.output.dense": 2},
            layers_to_transform=[2, 3], init_lora_weights=False),
        "gralora_k2": GraloraConfig(r=8, alpha=16, gralora_k=2, target_modules=["query", "value"], init_weights=False),
        "gralora_k4": GraloraConfig(r=8, alpha=16, gralora_k=4, target_modules=["query", "value", "intermediate.dense"],
                                    layers_to_transform=[0, 5], init_weights=False),
        "gralora_hybrid": GraloraConfig(r=8, hybrid_r=4, alpha=24, gralora_k=2, target_modules=["key", "output.dense"],
                                        layers_to_transform=[1, 4], init_weights=False),
    }


def make():
    from peft import get_peft_model

    d = home(2) / "minilm"
    tok = AutoTokenizer.from_pretrained(d)
    for name, cfg in configs().items():
        torch.manual_seed(0)
        base = AutoModel.from_pretrained(d)
        base.eval()
        model = get_peft_model(base, cfg)
        model.eval()
        out = OUT / name
        model.save_pretrained(out)
        emb = embed(model, tok)
        (out / "outputs.json").write_text(json.dumps({"sentences": SENTENCES, "embeddings": emb.tolist()}) + "\n")
        keys = sorted(__import__("safetensors.torch").torch.load_file(out / "adapter_model.safetensors").keys())
        print(name, len(keys), keys[:2])
    base = AutoModel.from_pretrained(d)
    (OUT / "base_outputs.json").write_text(json.dumps({"embeddings": embed(base, tok).tolist()}) + "\n")


def check():
    from peft import PeftModel

    adapter = Path(sys.argv[2])
    d = home(3) / "minilm"
    tok = AutoTokenizer.from_pretrained(d)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(d), adapter)
    model.eval()
    emb = embed(model, tok)
    ours = torch.tensor(json.loads((adapter / "outputs.json").read_text())["embeddings"])
    cos = torch.nn.functional.cosine_similarity(emb, ours, dim=-1)
    print(f"{adapter}: PEFT vs gralora: min cosine {cos.min().item():.7f}, max abs error {(emb - ours).abs().max().item():.2e}")


def merged():
    d = Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(d)
    emb = embed(AutoModel.from_pretrained(d).eval(), tok)
    want = torch.tensor(json.loads((OUT / sys.argv[3] / "outputs.json").read_text())["embeddings"])
    cos = torch.nn.functional.cosine_similarity(emb, want, dim=-1)
    print(f"{d}: transformers on the merged snapshot vs PEFT unmerged: min cosine {cos.min().item():.7f}, "
          f"max abs error {(emb - want).abs().max().item():.2e}")


def exported():
    from peft import PeftModel

    adapter = Path(sys.argv[2])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA", cfg["peft_type"]
    d = home(4) / "minilm"
    tok = AutoTokenizer.from_pretrained(d)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(d), adapter)
    model.eval()
    ranks = sorted({m.r["default"] for m in model.modules() if hasattr(m, "lora_A") and "default" in m.r})
    emb = embed(model, tok)
    want = torch.tensor(json.loads((OUT / sys.argv[3] / "outputs.json").read_text())["embeddings"])
    err = (emb - want).abs().max().item()
    print(f"{adapter}: PEFT LoRA (ranks {ranks}) vs PEFT GraLoRA {sys.argv[3]}: max abs error {err:.2e}")
    sys.exit(0 if err <= 1e-5 else 1)


def smollm2():
    import subprocess

    from peft import GraloraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    out, binary = Path(sys.argv[2]), sys.argv[3]
    d = home(4) / "smollm2"
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf)
    ids = tok("The capital of Italy is Rome, and the capital of France is", return_tensors="pt")

    # float64 as well: what is left in f32 is the summation order of 30 layers, not the export.
    dtype = torch.float64 if os.environ.get("PEFT_CHECK_F64") == "1" else torch.float32

    def load():
        return AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf, torch_dtype=torch.float32).eval()

    torch.manual_seed(0)
    cfg = GraloraConfig(r=8, alpha=16, gralora_k=2, init_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(load(), cfg).eval()
    model.save_pretrained(out / "gralora")  # f32, as adapters are stored
    with torch.no_grad():
        want = model.to(dtype)(**ids).logits
        with model.disable_adapter():
            moved = (model(**ids).logits - want).abs().max().item()
    assert moved > 1e-2, f"the GraLoRA adapter must change the logits (moved {moved})"
    subprocess.run([binary, "export", "--adapter", str(out / "gralora"), "--model", "smollm2",
                    "--to", "lora", "--out", str(out / "lora")], check=True)
    lora = PeftModel.from_pretrained(load(), out / "lora").eval().to(dtype)
    with torch.no_grad():
        got = lora(**ids).logits
    err = (got - want).abs().max().item()
    rel = err / want.abs().max().item()
    print(f"SmolLM2 ({dtype}): PEFT LoRA from `gralora export` vs PEFT GraLoRA: max abs error {err:.2e} "
          f"(relative {rel:.1e}) over {want.numel()} logits; the adapter moves them by up to {moved:.2f}")
    sys.exit(0 if rel <= (1e-12 if dtype == torch.float64 else 1e-5) else 1)


if __name__ == "__main__":
    {"make": make, "check": check, "merged": merged, "exported": exported, "smollm2": smollm2}[sys.argv[1]]()
