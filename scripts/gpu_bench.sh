#!/usr/bin/env bash
# The GPU measurements behind README's GPU table, from prebuilt binaries, on a machine with a GPU
# and no cargo or network (python3 with torch, transformers and peft for the PyTorch reference):
#
#   scripts/gpu_bench.sh BIN_DIR MINILM_DIR OUT_DIR [PARTS]
#
# PARTS (default step,layer,tests: all three fit one 10-minute device call) picks what runs, in that
# order: `step` whole training steps at 16 × 128 (gralora, lora, full, with their counts: launches,
# host reads and writes, Fusion blocks, opaque ops, kernels compiled, first step) against PyTorch +
# PEFT on CUDA, `layer` the layer grid (tuned, 10 steps queued per sample), `tests` the kernel test
# binaries on the GPU. Opt-in parts for a second call: `layer-extra` (the grid with the two-pass
# form alone, untuned, and step by step) and `step-b64` (batch 64 × 256). It ends with one table of
# the step part (OUT_DIR/table.txt, also printed).
#
# BIN_DIR holds `bench_layer` and `gralora` (release builds) and the test binaries `kernels` and
# `kernel_forms` (every kernel form, forced through KernelPolicy; a missing one is skipped), plain or as NAME.xz;
# MINILM_DIR holds MiniLM's config.json and tokenizer files (the weights are not needed: a randomly
# initialised model of the same shapes is written, since timings do not depend on values).
# `scripts/gpu_prepare.sh` stages both, and prints the device commands.
# Each step has its own time limit, so one that hangs does not cost the rest, and no step runs past
# GPU_BENCH_SECONDS (default 540) from the start, so a part fits one 10-minute device call; the
# most telling steps run first. Everything lands in OUT_DIR as it is produced, in four files (a
# device call returns at most eight): summary.txt (each step, its limit, exit status and time),
# steps.log (every step's output, each line prefixed by the step's name and a tab; the JSON lines of
# `bench_layer` and `bench step` are the ones whose second field starts with `{`),
# tuner_choices.txt (what cubecl's autotuner chose per shape class in the layer grid) and table.txt.
# cubecl keeps its tuning results in memory only in this build (no `persistence` feature), so a
# second call compiles and tunes again: its first steps are not faster.
set -u
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    echo "usage: scripts/gpu_bench.sh BIN_DIR MINILM_DIR OUT_DIR [step,layer,tests] (see the comment at the top)" >&2
    exit 2
fi
bin=$1 minilm=$2 out=$3 parts=,${4:-step,layer,tests},
for p in ${parts//,/ }; do
    case $p in
    step | layer | tests | layer-extra | step-b64) ;;
    *)
        echo "gpu_bench: unknown part '$p'; the parts are step, layer, tests, layer-extra and step-b64" >&2
        exit 2
        ;;
    esac
done
has() { [[ $parts == *",$1,"* ]]; }
# Binaries staged xz-compressed (gpu_prepare.sh) are unpacked first, with xz or Python's lzma.
if ls "$bin"/*.xz >/dev/null 2>&1; then
    unpacked=$(mktemp -d)
    for f in "$bin"/*.xz; do
        dest=$unpacked/$(basename "$f" .xz)
        if command -v xz >/dev/null; then
            xz -dc "$f" >"$dest"
        else
            python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$f" "$dest"
        fi
        chmod +x "$dest"
    done
    bin=$unpacked
fi
mkdir -p "$out"
deadline=${GPU_BENCH_SECONDS:-540}
export GRALORA_BLAS=off XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
step() { # NAME SECONDS CMD...: run CMD with a limit, its output appended to OUT_DIR/steps.log
    local name=$1 limit=$2
    shift 2
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 15 ]; then
        echo "== $name: skipped, ${left}s left of GPU_BENCH_SECONDS=$deadline" | tee -a "$out/summary.txt"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee -a "$out/summary.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | sed -u "s/^/$name\t/" >>"$out/steps.log"
    echo "   exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$out/summary.txt" 2>&1

snapshot() { # a MiniLM-shaped snapshot with random weights (same keys and shapes as the real model)
    [ -n "${snap:-}" ] && return
    snap=$(mktemp -d)/minilm
    mkdir -p "$snap"
    cp "$minilm"/config.json "$minilm"/tokenizer.json "$minilm"/tokenizer_config.json \
        "$minilm"/special_tokens_map.json "$minilm"/vocab.txt "$snap"/
    step snapshot 40 python3 -c "
import sys, torch
from transformers import BertConfig, BertModel
from safetensors.torch import save_file
torch.manual_seed(0)
m = BertModel(BertConfig.from_pretrained(sys.argv[1]), add_pooling_layer=True)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, sys.argv[1] + '/model.safetensors', metadata={'format': 'pt'})
print(len(m.state_dict()), 'tensors')
" "$snap"
}
if has step; then
    snapshot
    step step_gralora 190 "$bin/gralora" bench step --model "$snap" --method gralora,lora,full \
        --rank 32 --k 2 --batch-size 16 --seq-len 128 --warmup 3 --iters 11 --device wgpu --json
    step step_peft 60 python3 scripts/bench_peft.py --home "$(dirname "$snap")" --method gralora,lora,full \
        --rank 32 --k 2 --batch-size 16 --seq-len 128 --warmup 3 --iters 11 --device cuda --json
fi
if has step-b64; then
    snapshot
    # A larger batch, where the GPU is busy rather than waiting on launches.
    step step_gralora_b64 120 "$bin/gralora" bench step --model "$snap" --method gralora,lora,full \
        --rank 32 --k 2 --batch-size 64 --seq-len 256 --warmup 3 --iters 11 --device wgpu --json
    step step_peft_b64 40 python3 scripts/bench_peft.py --home "$(dirname "$snap")" --method gralora,lora,full \
        --rank 32 --k 2 --batch-size 64 --seq-len 256 --warmup 3 --iters 11 --device cuda --json
fi
# One table of the step parts: gralora's step and its counts beside PyTorch + PEFT's step.
python3 - "$out/steps.log" >"$out/table.txt" 2>&1 <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    name, _, rest = line.rstrip("\n").partition("\t")
    if not rest.startswith("{"):
        continue
    r = json.loads(rest)
    if "method" not in r or "launches_per_step" not in r and not name.startswith("step_peft"):
        continue
    key = (r["method"], r.get("batch_size"), r.get("seq_len"))
    side = "peft" if name.startswith("step_peft") else "gralora"
    rows.setdefault(key, {})[side] = r
cols = ["method", "batch", "gralora ms", "first step ms", "launches", "host reads", "host writes",
        "fusion blocks", "opaque", "kernels", "PEFT ms", "gralora / PEFT"]
print("| " + " | ".join(cols) + " |")
print("|" + " --- |" * len(cols))
for (method, b, t), r in sorted(rows.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0])):
    g, p = r.get("gralora", {}), r.get("peft", {})
    gm, pm = g.get("ms_per_step"), p.get("ms_per_step")
    f = lambda v, d=1: "" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    print("| " + " | ".join([method, f"{b}×{t}", f(gm), f(g.get("first_step_ms"), 0),
          f(g.get("launches_per_step")), f(g.get("host_reads_per_step")), f(g.get("host_writes_per_step")),
          f(g.get("fusion_blocks_per_step")), f(g.get("opaque_ops_per_step")), f(g.get("kernels_compiled")),
          f(pm), f(gm / pm, 2) if gm and pm else ""]) + " |")
PY
cat "$out/table.txt"
if has layer; then
    # The layer grid, methods timed round-robin. Each sample is 10 steps queued back to back and read
    # back once (a step's time is then what it costs inside a training loop, not a device round trip,
    # which on a fast GPU outweighs the layer's arithmetic).
    # cubecl's log says what the tuner chose per shape class (only its choices are kept: the whole log is
    # large); kernels are compiled and tuned in the warm-up, so the timed samples do not write to it.
    log=$(mktemp)
    step bench_layer 110 env CUBECL_DEBUG_LOG="$log" "$bin/bench_layer" --device wgpu --json --warmup 5 --iters 11 --chain 10
    grep '^Fastest result' "$log" >"$out/tuner_choices.txt" 2>/dev/null
    rm -f "$log"
fi
if has layer-extra; then
    # The two-pass form alone (the tuner's last candidate: regroup copies and burn's matmul, as the
    # composite), against which the tuned choice is measured.
    step bench_layer_two_pass 75 "$bin/bench_layer" --device wgpu --json --warmup 5 --iters 11 --chain 10 --candidate 16
    # The same with the tiled kernel's default plans (no autotuning), to measure what tuning does on
    # this GPU.
    step bench_layer_untuned 75 env GRALORA_WGSL_TUNE=0 "$bin/bench_layer" --device wgpu --json --warmup 5 --iters 11 --chain 10
    # One step per sample, each read back (as the first H200 table was measured).
    step bench_layer_sync 45 "$bin/bench_layer" --device wgpu --json --warmup 5 --iters 21
fi
if has tests; then
    # Each binary with its limit, the most telling first.
    for t in kernels:45 kernel_forms:120; do
        if [ -x "$bin/${t%:*}" ]; then
            step "${t%:*}" "${t#*:}" env GRALORA_REQUIRE_WGPU=1 "$bin/${t%:*}" --test-threads 1
        fi
    done
fi

echo "== done" >>"$out/summary.txt"
