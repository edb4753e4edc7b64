#!/usr/bin/env bash
# The GPU figures of issues 11 and 14 on a lent CUDA machine, in slots that fit its short
# lease (each part under 10 minutes; the machine's own python: torch, torchvision, pandas,
# pyarrow, scikit-learn, no Streamlit/DuckDB/Ray/TorchCodec, so only the benches run).
#
#   bash bench/gpu.sh prepare            # here: copy the demo's Fashion-MNIST test files
#                                        # into cache/fashion-mnist (carried to the machine)
#   bash bench/gpu.sh extract            # there: issue 14, fp32 and bf16 (~5 min)
#   bash bench/gpu.sh saliency           # there: issue 11, the _cuda keys (~4 min)
#
# With the device tool: run(command="bash bench/gpu.sh extract", carry=["cache/fashion-mnist"]).
# Each part writes its log and its JSON line(s) under $OUT (or ./gpu-out without it).
set -uo pipefail
cd "$(dirname "$0")/.."
part="${1:-}"
out="${OUT:-gpu-out}"
py="${PYTHON:-python3}"

case "$part" in
  prepare)
    mkdir -p cache/fashion-mnist
    for name in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
      [ -f "cache/fashion-mnist/$name" ] || cp "/usr/share/datasets/fashion-mnist/$name" cache/fashion-mnist/
    done
    ls -l cache/fashion-mnist
    ;;
  extract|saliency)
    mkdir -p "$out"
    "$py" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" | tee "$out/machine.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$out/machine.txt" 2>&1 || true
    if [ "$part" = extract ]; then
      timeout 300 "$py" bench/extract.py --gpu-only 2>&1 | tee "$out/extract_fp32.log"
      timeout 180 "$py" bench/extract.py --gpu-only --precision bf16 2>&1 | tee "$out/extract_bf16.log"
      tail -n 1 "$out/extract_fp32.log" > "$out/extract_fp32.json"
      tail -n 1 "$out/extract_bf16.log" > "$out/extract_bf16.json"
    else
      timeout 500 "$py" bench/saliency.py --cuda-only 2>&1 | tee "$out/saliency.log"
      tail -n 1 "$out/saliency.log" > "$out/saliency.json"
    fi
    ;;
  *)
    echo "usage: bash bench/gpu.sh prepare|extract|saliency" >&2
    exit 2
    ;;
esac
