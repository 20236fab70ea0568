#!/usr/bin/env python3
"""Reference numbers for tests/models.rs, computed by independent implementations.

- MiniLM: sentence-transformers (PyTorch) on the fetched snapshot: mean-pooled, L2-normalised
  embeddings of fixed sentences.
- SmolLM2-135M GGUF: Hugging Face transformers loading the GGUF file itself (gguf-py dequantises,
  transformers un-permutes q/k and converts the tokenizer): token ids, perplexity on a fixed
  paragraph, top-5 next tokens after a prompt.

Run by hand (not by CI), after `gralora fetch minilm smollm2`:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install sentence-transformers gguf accelerate
    /tmp/refenv/bin/python scripts/reference_models.py [GRALORA_HOME]
Writes tests/fixtures/minilm_reference.json and tests/fixtures/smollm2_reference.json.
"""
import json
import math
import os
import sys
from pathlib import Path

import torch

HOME = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("GRALORA_HOME", Path.home() / ".cache/gralora"))
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Tuesday.",
    "Rust programs are compiled ahead of time.",
]

PARAGRAPH = (
    "The river runs through the middle of the old town, and on summer evenings people gather on its banks "
    "to talk, eat and watch the boats go by. Most of the houses along the water were built more than two "
    "hundred years ago, when the town was an important market for wool and grain. Today the market is "
    "smaller, but every Saturday farmers still come from the nearby villages to sell vegetables, cheese "
    "and bread."
)
PROMPT = "The capital of Italy is"


def minilm():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(HOME / "minilm"), device="cpu")
    emb = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    tok = model.tokenizer
    ids = [tok(s)["input_ids"] for s in SENTENCES]
    cos = lambda a, b: float((emb[a] * emb[b]).sum())
    return {
        "generator": f"sentence-transformers {__import__('sentence_transformers').__version__}, torch {torch.__version__}",
        "sentences": SENTENCES,
        "token_ids": ids,
        "embeddings": emb.tolist(),
        "cosine_paraphrase_0_1": cos(0, 1),
        "cosine_unrelated_0_2": cos(0, 2),
    }


def smollm2():
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = HOME / "smollm2"
    f = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    ids = tok(PARAGRAPH, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        nll = -logp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
        ppl = math.exp(float(nll.mean()))
        pids = tok(PROMPT, add_special_tokens=False)["input_ids"]
        p = torch.softmax(model(torch.tensor([pids])).logits[0, -1].double(), -1)
        top = torch.topk(p, 5)
        gen = model.generate(torch.tensor([pids]), max_new_tokens=8, do_sample=False)
    return {
        "generator": f"transformers {transformers.__version__} (GGUF loader, gguf-py dequantisation), torch {torch.__version__}",
        "paragraph": PARAGRAPH,
        "paragraph_ids": ids,
        "perplexity": ppl,
        "prompt": PROMPT,
        "prompt_ids": pids,
        "top5": [{"id": int(i), "token": tok.decode([int(i)]), "prob": float(q)} for q, i in zip(top.values, top.indices)],
        "greedy_8": tok.decode(gen[0][len(pids):]),
    }


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fn in [("minilm_reference.json", minilm), ("smollm2_reference.json", smollm2)]:
        data = fn()
        (OUT / name).write_text(json.dumps(data, indent=1) + "\n")
        print(name, {k: v for k, v in data.items() if k not in ("embeddings", "token_ids", "paragraph_ids")})
