#!/usr/bin/env bash
# Our CPU backend against the PyTorch peer on the same machine, the same
# workloads and the same number of threads, interleaved in one run (ours,
# torch, ours, torch) so drift in the machine hits both alike.
#
#   PYTHON=/path/to/venv/bin/python bash benches/cpu_vs_pytorch.sh [W0 W1 W2 W3]
#
# Prints one JSON line per measurement. PEER defaults to ../shared/peers/torch_mlp.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PEER=${PEER:-../shared/peers/torch_mlp.py}
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-2}
cargo build --release --quiet
bin=target/release/shadertrain
spec() {
  case $1 in
    W0) echo "2,2,2 1 2000" ;;
    W1) echo "784,256,256,10 1024 50" ;;
    W2) echo "1024,1024,1024,1024 1024 10" ;;
    W3) echo "4096,4096,4096 4096 3" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}
for w in "${@:-W0 W1 W2 W3}"; do
  for w1 in $w; do
    read -r layers batch steps <<<"$(spec "$w1")"
    for _ in $(seq "$ROUNDS"); do
      "$bin" bench --backend cpu --workload "$w1" --threads "$THREADS" --json
      "$PYTHON" "$PEER" --device cpu --threads "$THREADS" --layers "$layers" \
        --batch "$batch" --steps "$steps" 2>/dev/null
    done
  done
done
