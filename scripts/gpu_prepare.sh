#!/usr/bin/env bash
# Stages, on this machine, what scripts/gpu_bench.sh needs on a lent GPU machine (which has no cargo
# and no network), so that a session lent one spends its device minutes measuring, not building:
#
#   scripts/gpu_prepare.sh
#
# - .gpu/bin: stripped, xz-compressed release builds of `bench_layer`, `gralora` and the test
#   binaries `kernels` and `kernel_forms`;
# - .gpu/minilm: MiniLM's config and tokenizer files (fetched with `gralora fetch minilm` if missing);
# - .gl: the Vulkan and GL loaders as Debian packages (amd64), which the GPU machine may lack.
# Both folders are ignored by git and travel with `carry`. It ends by printing the device commands.
# The first release build takes about 25 minutes on 2 cores (23 measured), later ones seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/gralora-target}
export GRALORA_HOME=${GRALORA_HOME:-$HOME/.cache/gralora}

# Two test binaries (each ~10 MB compressed): the default forms, and every other form forced
# through KernelPolicy in one binary.
tests=(kernels kernel_forms)
# Staged in .gpu.new and .gl.new, renamed once complete: a failed run leaves the old folders as
# they were and nothing half-written.
stage=.gpu.new gl_stage=.gl.new
trap 'rm -rf "$stage" "$gl_stage"' EXIT
rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/minilm"
# --workspace, so that burn's features unify as in every other build (a single -p rebuilds burn).
echo "gpu_prepare: building (release) gralora, bench_layer and the tests ${tests[*]}" >&2
json=(--release --workspace --message-format=json-render-diagnostics)
cargo build "${json[@]}" --bin gralora --example bench_layer >"$stage/build.json"
targets=()
for t in "${tests[@]}"; do targets+=(--test "$t"); done
cargo test "${json[@]}" --no-run "${targets[@]}" >>"$stage/build.json"
python3 - "$stage/build.json" "$stage/bin" <<'EOF'
import json, shutil, sys
wanted = {"gralora": "bin", "bench_layer": "example", "kernels": "test", "kernel_forms": "test"}
found = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    name, kinds = m["target"]["name"], m["target"]["kind"]
    # `cargo test` also builds the binary's own unit-test harness, under the same name.
    if wanted.get(name) in kinds and (wanted[name] == "test") == m["profile"]["test"]:
        found[name] = m["executable"]
missing = set(wanted) - set(found)
if missing:
    sys.exit(f"gpu_prepare: cargo built no executable for {sorted(missing)}")
for name, path in found.items():
    shutil.copy(path, f"{sys.argv[2]}/{name}")
EOF
rm "$stage/build.json"
# Stripped and xz-compressed (63-83 MiB each stripped, 10-14 MB compressed);
# gpu_bench.sh unpacks them.
strip "$stage"/bin/*
xz -T0 -9 "$stage"/bin/*

if [ ! -f "$GRALORA_HOME/minilm/tokenizer.json" ]; then
    cargo run -q --release --bin gralora -- fetch minilm
fi
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
    cp "$GRALORA_HOME/minilm/$f" "$stage/minilm/"
done

debs=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
have_debs() { for d in "${debs[@]}"; do ls .gl/"${d}"_*.deb >/dev/null 2>&1 || return 1; done; }
if ! have_debs; then
    rm -rf "$gl_stage" && mkdir -p "$gl_stage" /tmp/amd64/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update -qq
    (cd "$gl_stage" && apt-get "${o[@]}" download "${debs[@]}")
    rm -rf .gl && mv "$gl_stage" .gl
fi
rm -rf .gpu && mv "$stage" .gpu

size=$(du -sm .gpu .gl | awk '{s += $1} END {print s}')
echo "gpu_prepare: .gpu and .gl hold ${size} MiB (a device call carries at most 64 MiB with the tree)" >&2
if [ "$size" -gt 58 ]; then
    echo "gpu_prepare: ${size} MiB leaves too little of a call's 64 MiB for the ~4 MiB tree; stage fewer test binaries (tests=... above)" >&2
    exit 1
fi
cat <<'EOF'
One device call with carry [".gpu", ".gl"] and timeout_s 600 (the script stops its steps by
GPU_BENCH_SECONDS); it prints one table (the training step with its counts beside PyTorch + PEFT):
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json; GPU_BENCH_SECONDS=540 bash scripts/gpu_bench.sh .gpu/bin .gpu/minilm $OUT
(a second call, if time is left: the same, ending in `$OUT layer-extra,step-b64`)
EOF
