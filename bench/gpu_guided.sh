#!/usr/bin/env bash
# The guided-training ablation on one GPU (docs/EXPLAINABILITY.md, assets/MODEL_CARD.md): three
# runs of training.train_guided side by side for the same wall time, then the winner's fp16
# weights in parts of at most 12 MB (the device tool brings back files of at most 16 MB).
#   CACHE=runs/cache/trainval.npz MINUTES=6 OUT=out bash bench/gpu_guided.sh
# (EXTRA="--device cpu --batch-size 2 --samples-per-epoch 2" adds flags to every run: a smoke test)
# Winner: the best val pointing game on lesion films among the runs whose best val macro-F1
# is within 0.02 of the best run's. Join the parts with `cat model.safetensors.part-* >`.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${CACHE:-runs/cache/trainval.npz}
minutes=${MINUTES:-6}
out=${OUT:-runs/gpu-out}
runs=runs/ablation
mkdir -p "$out" "$runs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
train() {
  local name=$1
  shift
  python3 -m training.train_guided --cache "$cache" --out "$runs/$name" \
    --max-minutes "$minutes" "$@" ${EXTRA:-} >"$runs/$name.log" 2>&1 &
}
train lesion-lung-s16 --box-weight 1 --lung-weight 0.25 --output-stride 16
train none-s16 --box-weight 0 --lung-weight 0 --output-stride 16
train lesion-lung-s32 --box-weight 1 --lung-weight 0.25 --output-stride 32
status=0
wait || status=$?
tail -n 3 "$runs"/*.log
python3 - "$runs" "$out" <<'PY'
import json, shutil, sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
best = {}
with open(out / "ablation.jsonl", "w") as fh:
    for run in sorted(p for p in runs.iterdir() if (p / "metrics.jsonl").is_file()):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for record in records:
            fh.write(json.dumps({"run": run.name, **record}) + "\n")
        saved = [r for r in records if r.get("saved")]
        if saved:
            best[run.name] = saved[-1]
for name, record in best.items():
    print(name, {k: record[k] for k in ("epoch", "val_macro_f1", "val_lesion_pointing", "val_prior_pointing")})
top_f1 = max(r["val_macro_f1"] for r in best.values())
eligible = {n: r for n, r in best.items() if r["val_macro_f1"] >= top_f1 - 0.02}
winner = max(eligible, key=lambda n: eligible[n]["val_lesion_pointing"] or 0.0)
print("winner", winner)
shutil.copy(runs / winner / "best" / "config.json", out / "config.json")
data = (runs / winner / "best" / "model.safetensors").read_bytes()
part = 12 * 1024 * 1024
for i in range(0, len(data), part):
    (out / f"model.safetensors.part-{i // part}").write_bytes(data[i : i + part])
(out / "winner.txt").write_text(winner + "\n")
PY
exit $status
