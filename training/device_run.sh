#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the `device` tool): train the default model with CUDA,
# time BandEngine.step on CUDA (a CUDA graph per bar, and eager) against the CPU on the same machine,
# and run the tests marked `cuda` (CPU and CUDA bands equal for a seed; graph equal to eager).
#
#   carried: data/ (the corpora: vaejam data synth --out data/corpus400 ...; vaejam data human
#   --sources freedoom --out data/human-freedoom) and .pylib/ (pure-Python packages the GPU image
#   lacks: pretty_midi, mido, six, packaging). Writes the model and the logs to $OUT.
#   Locally (no GPU): DEVICE=cpu VAE_EPOCHS=1 NN_EPOCHS=1 OUT=/tmp/out bash training/device_run.sh
#   Timing of the committed model only: SKIP_TRAIN=1 bash training/device_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/.pylib:$PWD" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-data/corpus400,data/human-freedoom}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

MODEL=/tmp/vaejam-model
if [ "${SKIP_TRAIN:-0}" = 1 ]; then MODEL=models/default; else
/usr/bin/time -v python3 - "$DEVICE" "$DATA" 2>"$OUT/time.txt" <<'EOF' | tee "$OUT/train.txt"
import json, os, sys
from training.train import TrainConfig, train
from models.networks import BandConfig
device, data = sys.argv[1], sys.argv[2]
cfg = TrainConfig(data=data, out="/tmp/vaejam-model", device=device, seed=0,
                  vae_epochs=int(os.environ.get("VAE_EPOCHS", 12)), nn_epochs=int(os.environ.get("NN_EPOCHS", 30)),
                  batch_size=32, lr=1e-3, model=BandConfig(arch="context").to_dict())
report = train(cfg)
print(json.dumps({k: report[k] for k in ("seconds", "melody_choice", "thresholds")}, indent=1))
EOF
grep -E "Elapsed|Maximum resident" "$OUT/time.txt" || true
cp /tmp/vaejam-model/config.json /tmp/vaejam-model/model.safetensors /tmp/vaejam-model/training_log.json \
   /tmp/vaejam-model/training.png "$OUT/"
fi

python3 - "$DEVICE" "$MODEL" <<'EOF' | tee "$OUT/step_timing.txt"
import sys, time
import numpy as np, torch
from models.checkpoint import load_band_model
from models.engine import BandEngine
torch.set_num_threads(1)
rng = np.random.default_rng(0)
bars = [(rng.random((32, 128)) > 0.97).astype(np.float32) * 0.7 for _ in range(64)]
runs = [("cpu", None)] + ([(sys.argv[1], True), (sys.argv[1], False)] if sys.argv[1] != "cpu" else [])
for device, graph in runs:
    started = time.perf_counter()
    engine = BandEngine(load_band_model(sys.argv[2]), device=device, cuda_graph=graph)
    engine.warmup()
    ready = time.perf_counter() - started
    times = []
    for i in range(1000):
        started = time.perf_counter()
        engine.step(bars[i % 64])
        times.append((time.perf_counter() - started) * 1000)
    p50, p99 = np.percentile(times, [50, 99])
    print(f"{device}{', CUDA graph' if graph else ''}: BandEngine.step p50 {p50:.3f} ms, p99 {p99:.3f} ms "
          f"over 1000 bars (one torch thread); ready (load + warmup) {ready:.2f} s")
EOF

if [ "$DEVICE" != cpu ]; then
  python3 -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt"
  # the bench's inference rows: CUDA variants beside the nn modules, then the CPU's, 1/2/4 bands
  python3 -m bridge.cli bench --no-live --bars 1000 --bands 1,2,4 2>&1 | tee "$OUT/bench.txt"
fi
