#!/usr/bin/env bash
# The GPU measurements behind README's GPU table, from prebuilt binaries, on a machine with a GPU
# and no cargo or network (python3 with torch, transformers and peft for the PyTorch reference):
#
#   scripts/gpu_bench.sh BIN_DIR MINILM_DIR OUT_DIR
#
# BIN_DIR holds `bench_layer` and `gralora` (release builds) and the test binaries `kernels`,
# `cube_twin`, `split_k` and `tuned_tiles` (any missing one is skipped); MINILM_DIR holds MiniLM's config.json and tokenizer files (the weights are not needed:
# a randomly initialised model of the same shapes is written, since timings do not depend on values).
# Each step has its own time limit, so one that hangs does not cost the rest; everything lands in
# OUT_DIR as it is produced.
set -u
if [ $# -ne 3 ]; then
    echo "usage: scripts/gpu_bench.sh BIN_DIR MINILM_DIR OUT_DIR (see the comment at the top)" >&2
    exit 2
fi
bin=$1 minilm=$2 out=$3
mkdir -p "$out"
export GRALORA_BLAS=off XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
step() { # NAME SECONDS CMD...: run CMD with a limit, its output appended to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$out/summary.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$out/$name.log" 2>&1
    echo "   exit $? after $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$out/summary.txt" 2>&1

# The layer grid, methods timed round-robin. Each sample is 10 steps queued back to back and read
# back once (a step's time is then what it costs inside a training loop, not a device round trip,
# which on a fast GPU outweighs the layer's arithmetic).
# cubecl's log says what the tuner chose per shape class (only its choices are kept: the whole log is
# large); kernels are compiled and tuned in the warm-up, so the timed samples do not write to it.
step bench_layer 120 env CUBECL_DEBUG_LOG="$out/cubecl.log" "$bin/bench_layer" --device wgpu --json --warmup 5 --iters 11 --chain 10
grep '^Fastest result' "$out/cubecl.log" >"$out/tuner_choices.txt" 2>/dev/null
rm -f "$out/cubecl.log"
# The two-pass form alone (the tuner's last candidate: regroup copies and burn's matmul, as the
# composite), against which the tuned choice is measured.
step bench_layer_two_pass 120 "$bin/bench_layer" --device wgpu --json --warmup 5 --iters 11 --chain 10 --candidate 16
# The same with the tiled kernel's default plans (no autotuning), to measure what tuning does on
# this GPU.
step bench_layer_untuned 120 env GRALORA_WGSL_TUNE=0 "$bin/bench_layer" --device wgpu --json --warmup 5 --iters 11 --chain 10
# One step per sample, each read back (as the first H200 table was measured).
step bench_layer_sync 120 "$bin/bench_layer" --device wgpu --json --warmup 5 --iters 21
for t in kernels cube_twin split_k tuned_tiles; do
    if [ -x "$bin/$t" ]; then
        step "$t" 60 env GRALORA_REQUIRE_WGPU=1 "$bin/$t" --test-threads 1
    fi
done

# A MiniLM-shaped snapshot with random weights (same keys and shapes as the real model).
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

step step_gralora 60 "$bin/gralora" bench step --model "$snap" --method gralora,lora,full \
    --rank 32 --k 2 --batch-size 16 --seq-len 128 --warmup 3 --iters 21 --device wgpu --json
step step_peft 60 python3 scripts/bench_peft.py --home "$(dirname "$snap")" --method gralora,lora,full \
    --rank 32 --k 2 --batch-size 16 --seq-len 128 --warmup 3 --iters 21 --device cuda --json
# A larger batch, where the GPU is busy rather than waiting on launches.
step step_gralora 45 "$bin/gralora" bench step --model "$snap" --method gralora,lora,full \
    --rank 32 --k 2 --batch-size 64 --seq-len 256 --warmup 3 --iters 11 --device wgpu --json
step step_peft 40 python3 scripts/bench_peft.py --home "$(dirname "$snap")" --method gralora,lora,full \
    --rank 32 --k 2 --batch-size 64 --seq-len 256 --warmup 3 --iters 11 --device cuda --json
echo "== done" >>"$out/summary.txt"
