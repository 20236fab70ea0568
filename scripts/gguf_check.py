#!/usr/bin/env python3
"""Check a gralora-written llama.cpp LoRA adapter with llama.cpp's own `gguf` package.

Run by hand (not by CI), after `gralora fetch smollm2`:
    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install numpy gguf
    GRALORA_KEEP_EXPORT=/tmp/gguf-lora cargo test --workspace --test models -- llama_cpp_adapter merged_into_gguf
    /tmp/refenv/bin/python scripts/gguf_check.py /tmp/gguf-lora

When the test also kept DIR/merged-{f32,f16,q8_0}.gguf (`smollm2_merged_into_gguf...`), it checks
their metadata against the base's and their F16 and Q8_0 data byte for byte against numpy's f16
rounding and the `gguf` package's Q8_0 quantiser applied to the F32 file.

With `--llama-cpp BIN` (needs `pip install llama-cpp-python`; BIN is the `gralora` binary) it also
runs llama.cpp itself on the base GGUF with `adapter.gguf` loaded (`lora_path`) and compares the
next-token distribution and the greedy completion with `gralora infer --adapter DIR/peft` (the same
adapter as PEFT files), with and without the adapter. llama.cpp multiplies Q4_1 weights by
8-bit-quantised activations, gralora by the dequantised f32 weights, so probabilities agree to
about 0.03, not to rounding, and a greedy completion can part at a near tie; the check is that
the adapter moves both the same way (passes when every top-5 probability is within 0.08; on the
merged F16 file, which llama.cpp multiplies with f16 activations rather than 8-bit ones, within 0.01).

The test writes DIR/adapter.gguf (GraLoRA on SmolLM2, exported) and DIR/layers.json (for a few
layers: an input x and gralora's output y of the adapted layer, its features in llama.cpp's
order). This script reads both GGUF files with `gguf.GGUFReader`, dequantises the base weight
with `gguf.quants`, computes each layer the way llama.cpp applies an adapter,
`y = x Wᵀ + alpha / rank · (x Aᵀ) Bᵀ`, and prints the error against gralora's y. It also checks
the metadata llama.cpp requires of an adapter (llama-adapter.cpp).
"""
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, Keys
from gguf.quants import dequantize


def field(reader, key):
    f = reader.fields[key]
    t = f.types[0]
    v = f.parts[f.data[0]]
    if t == GGUFValueType.STRING:
        return bytes(v).decode()
    return v[0].item(), t


def tensors(reader):
    out = {}
    for t in reader.tensors:
        # GGUF lists dims innermost first; numpy order is the reverse.
        shape = tuple(int(d) for d in reversed(t.shape))
        out[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
    return out


def main():
    d = Path(sys.argv[1])
    adapter = GGUFReader(d / "adapter.gguf")
    layers = json.loads((d / "layers.json").read_text())
    assert field(adapter, Keys.General.TYPE) == "adapter"
    assert field(adapter, Keys.Adapter.TYPE) == "lora"
    assert field(adapter, Keys.General.ARCHITECTURE) == "llama"
    alpha, ty = field(adapter, Keys.Adapter.LORA_ALPHA)
    assert ty == GGUFValueType.FLOAT32, f"adapter.lora.alpha must be FLOAT32, is {ty}"
    ad = tensors(adapter)
    base_reader = GGUFReader(layers["base"])
    base = {t.name: t for t in base_reader.tensors}
    print(f"{d / 'adapter.gguf'}: {len(ad)} tensors, alpha {alpha}")
    worst = 0.0
    for layer in layers["layers"]:
        name = layer["tensor"]
        t = base[name]
        w = dequantize(t.data, t.tensor_type).reshape(tuple(int(x) for x in reversed(t.shape)))
        a, b = ad[name + ".lora_a"], ad[name + ".lora_b"]
        rank = a.shape[0]
        assert a.shape == (rank, w.shape[1]) and b.shape == (w.shape[0], rank), (a.shape, b.shape, w.shape)
        x = np.array(layer["x"], dtype=np.float64).reshape(layer["tokens"], w.shape[1])
        y = x @ w.astype(np.float64).T + alpha / rank * (x @ a.T) @ b.T
        ours = np.array(layer["y"], dtype=np.float64).reshape(y.shape)
        err = np.abs(y - ours).max() / np.abs(y).max()
        delta = np.abs(alpha / rank * (x @ a.T) @ b.T).max() / np.abs(y).max()
        worst = max(worst, err)
        print(f"{name}: rank {rank}, adapter's share of the output {delta:.3f}, "
              f"relative max error vs gralora {err:.2e}")
    print(f"worst relative error {worst:.2e}")
    ok = worst < 1e-5
    if (d / "merged-f32.gguf").is_file():
        ok &= merged_check(d, base_reader)
    if "--llama-cpp" in sys.argv:
        ok &= llama_cpp_check(d, layers["base"], sys.argv[sys.argv.index("--llama-cpp") + 1])
    sys.exit(0 if ok else 1)


def merged_check(d, base):
    """The merged GGUF files: metadata as the base's, and the F16 and Q8_0 files' bytes exactly
    numpy's f16 rounding and the `gguf` package's Q8_0 quantiser of the F32 file's values."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    ok = True
    f32 = GGUFReader(d / "merged-f32.gguf")
    ref = {t.name: np.array(t.data).reshape(-1) for t in f32.tensors}
    skip = {"general.file_type", "general.alignment"}
    for name in ["merged-f32.gguf", "merged-f16.gguf", "merged-q8_0.gguf"]:
        r = GGUFReader(d / name)
        keys = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.") and k not in skip}
        same = all(
            k in keys and keys[k].types == f.types
            and all(np.array_equal(keys[k].parts[i], f.parts[i]) for i in range(1, len(f.parts)))
            for k, f in base.fields.items() if not k.startswith("GGUF.") and k not in skip
        )
        bad = 0
        for t in r.tensors:
            x = ref[t.name].astype(np.float32)
            if t.tensor_type == T.F16:
                want = x.astype(np.float16).view(np.uint8)
            elif t.tensor_type == T.Q8_0:
                want = quantize(x.reshape(-1, 32), T.Q8_0).reshape(-1)
            else:
                want = x.view(np.uint8)
            bad += not np.array_equal(np.array(t.data).view(np.uint8).reshape(-1), want)
        ok &= same and bad == 0
        print(f"{name}: {len(r.tensors)} tensors ({bad} differ from the reference encoding), "
              f"metadata {'as the base' if same else 'DIFFERS from the base'}")
    return ok


PROMPTS = ["The capital of Italy is", "def fibonacci(n):", "Water boils at"]


def llama_cpp_check(d, base, gralora_bin):
    import subprocess

    import llama_cpp

    ok = True
    runs = [(base, None), (base, d / "adapter.gguf")]
    if (d / "merged-f16.gguf").is_file():
        runs.append((d / "merged-f16.gguf", "merged"))
    for model, lora in runs:
        kw = dict(model_path=str(model), logits_all=True, verbose=False, n_ctx=256, seed=0)
        if lora and lora != "merged":
            kw["lora_path"] = str(lora)
        m = llama_cpp.Llama(**kw)
        for prompt in PROMPTS:
            toks = m.tokenize(prompt.encode(), add_bos=False, special=False)
            m.reset()
            m.eval(toks)
            lg = np.array(m.scores[len(toks) - 1], dtype=np.float64)
            p = np.exp(lg - lg.max())
            p /= p.sum()
            text = m.create_completion(prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
            cmd = [gralora_bin, "infer", "--model", str(base), "--prompt", prompt,
                   "--max-new-tokens", "8", "--json", "--device", "flex"]
            if lora:
                cmd += ["--adapter", str(d / "peft")]
            ours = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            top = ours["next_token_top5"]
            ids = [m.tokenize(t["token"].encode(), add_bos=False, special=False) for t in top]
            diff = max(abs(p[i[0]] - t["prob"]) for i, t in zip(ids, top) if len(i) == 1)
            same = text == ours["completion"]
            order = [int(i) for i in np.argsort(-p)[:5]] == [i[0] for i in ids if len(i) == 1]
            ok &= diff < (0.01 if lora == "merged" else 0.08)
            what = {None: "without adapter", "merged": "on merged-f16.gguf"}.get(lora, "with adapter")
            print(f"llama.cpp {what}, {prompt!r}: top-5 "
                  f"{'same order' if order else 'order differs'}, max |p - p_gralora| {diff:.4f}, "
                  f"greedy {'identical' if same else 'differs'}: {text!r} / {ours['completion']!r}")
    return ok


if __name__ == "__main__":
    main()
