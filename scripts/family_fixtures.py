#!/usr/bin/env python3
"""Tiny random-weight models of each supported family, made by transformers, for
tests/models/families.rs. No download: transformers builds each model from a config with random
weights (seeded) and saves it; the script records the model's output for fixed token ids.

Run by hand (not by CI):
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers
    /tmp/refenv/bin/python scripts/family_fixtures.py
        -> tests/fixtures/families/<name>/{config.json, model.safetensors, outputs.json}

outputs.json: `ids` [batch, seq] (with padding in the second row for encoders, `mask`), and
`logits` (decoders, [batch, seq, vocab]) or `hidden` (encoders, last_hidden_state [batch, seq,
hidden]), in float64 from a float32 model.
"""
import json
import re
import shutil
import sys
from pathlib import Path

import torch
import transformers as tf

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "families"
V, H, I, L = 384, 64, 96, 2

COMMON = dict(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
              num_attention_heads=4, max_position_embeddings=128)

DECODERS = {
    "llama": tf.LlamaConfig(**COMMON, num_key_value_heads=2, rms_norm_eps=1e-5,
                            rope_theta=10000.0, tie_word_embeddings=False),
    # Llama 3.1+: the "llama3" frequency rescaling of RoPE (head_dim 16, an original context of 64:
    # the highest frequency kept, the next blended, the rest divided by the factor).
    "llama3": tf.LlamaConfig(**COMMON, num_key_value_heads=2, rms_norm_eps=1e-5,
                             rope_theta=500000.0, tie_word_embeddings=True,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 64}),
    # Qwen2 / Qwen2.5: bias on q, k, v.
    "qwen2": tf.Qwen2Config(**COMMON, num_key_value_heads=2, rms_norm_eps=1e-6,
                            rope_theta=1000000.0, tie_word_embeddings=True),
    # Qwen3: per-head RMSNorm on q and k, an explicit head_dim.
    "qwen3": tf.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                            rope_theta=1000000.0, tie_word_embeddings=False),
}

ENCODERS = {
    # RoBERTa: positions start after the padding index, one token type.
    "roberta": tf.RobertaConfig(vocab_size=V, hidden_size=H, intermediate_size=I,
                                num_hidden_layers=L, num_attention_heads=4,
                                max_position_embeddings=130, type_vocab_size=1, pad_token_id=1),
}


def randomise(model):
    # transformers initialises norms to 1 and biases to 0; random values make a wrong layout show.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if "norm" in name.lower() and "bias" not in name else 0.0))


def save(name, model, out):
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ["generation_config.json"]:
        (d / extra).unlink(missing_ok=True)
    # 8 significant digits: far below the tests' 1e-4 tolerance, a third of the text.
    text = json.dumps(out, separators=(",", ":"))
    text = re.sub(r"-?\d+\.\d+(e-?\d+)?", lambda m: f"{float(m.group(0)):.8g}", text)
    (d / "outputs.json").write_text(text + "\n")
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{name}: {size / 1024:.0f} KiB")


def main():
    torch.manual_seed(0)
    ids = torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(2))
    for name, config in DECODERS.items():
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
        randomise(model)
        with torch.no_grad():
            logits = model(input_ids=ids).logits.double()
        save(name, model, {"ids": ids.tolist(), "logits": logits.tolist()})
    for name, config in ENCODERS.items():
        torch.manual_seed(0)
        model = tf.AutoModel.from_config(config, add_pooling_layer=False).eval()
        randomise(model)
        enc_ids = ids.clone()
        mask = torch.ones_like(enc_ids)
        enc_ids[1, 8:] = config.pad_token_id
        mask[1, 8:] = 0
        with torch.no_grad():
            hidden = model(input_ids=enc_ids, attention_mask=mask).last_hidden_state.double()
        save(name, model, {"ids": enc_ids.tolist(), "mask": mask.tolist(), "hidden": hidden.tolist()})


if __name__ == "__main__":
    main()
