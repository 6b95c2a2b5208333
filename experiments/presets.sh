#!/usr/bin/env bash
# Reproduce the README's results table: every preset trained, evaluated (the final weights, --checkpoint last,
# which for these schedules is also the most accurate on validation) and evaluated again with horizontal-flip
# test-time augmentation into RUN/tta. Usage: experiments/presets.sh PRESET:SEEDS ... e.g. fast:0,1,2 best:0
# Then: python experiments/summarise.py runs/presets/*
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/presets
for item in "$@"; do
  preset=${item%%:*}
  IFS=, read -ra seeds <<< "${item#*:}"
  for seed in "${seeds[@]}"; do
    dir="runs/presets/$preset-s$seed"
    .venv/bin/cifar-mlp run --config "$preset" --seed "$seed" --run-dir "$dir" --checkpoint last --overwrite --quiet \
      > "$dir.log" 2>&1 || { echo "$preset seed $seed failed: $(tail -1 "$dir.log")"; continue; }
    .venv/bin/cifar-mlp evaluate "$dir" --checkpoint last --tta flip --splits validation,test --out "$dir/tta" \
      > /dev/null
    echo "$preset seed $seed: $(grep '^done' "$dir.log")"
  done
done
