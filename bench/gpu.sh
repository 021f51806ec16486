#!/usr/bin/env bash
# The GPU benchmark as recorded in docs/BENCHMARKS.md: bench/run.py on CUDA with the bundled
# model, batch 1 and 8, bf16 autocast vs float32 (both channels_last), torch.compile, and
# how far bf16 outputs are from float32 ones. Results go to ${OUT:-bench-out}/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -m bench.run --model assets/model --device cuda --check-amp | tee "$out/amp_agreement.json"
for batch in 1 8; do
  for precision in --bf16 --fp32; do
    python3 -m bench.run --model assets/model --device cuda --batch "$batch" --rounds 30 \
      $precision --json "$out/run_b${batch}${precision/--/_}.json"
  done
done
python3 -m bench.run --model assets/model --device cuda --batch 8 --rounds 30 --bf16 --compile \
  --skip-libraries --json "$out/run_b8_compile.json"
