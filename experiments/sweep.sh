#!/usr/bin/env bash
# Accuracy sweep behind the presets (issue: better MLP recipes). Each line trains one variant on the 45k train
# split; choices are made on validation accuracy only. Usage: experiments/sweep.sh NAME [NAME ...] (or "all").
# Results: runs/sweep/NAME/history.csv; summarise with: cifar-mlp compare runs/sweep/*
set -euo pipefail
cd "$(dirname "$0")/.."
# The presets changed over the sweep; variants start from these fixed recipes so that each stays reproducible.
FAST_B="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1"  # the first best-noaug preset
BEST_300="$FAST_B --epochs 300 --set data.augment=[\"flip\",\"crop\"] --set optim.warmup_epochs=5.0"  # the first best preset
NOAUG_40="$FAST_B --epochs 40 --set train.bf16=true --set model.widths=[2048,1024,512] --set model.dropout=0.5 --set model.input_dropout=0.2"  # the second best-noaug preset
BEST_500="$BEST_300 --epochs 500 --set train.bf16=true"  # the second best preset
PROJECT="--set model.whitening=\"project\" --set model.whitening_dims"  # followed by =K: keep the top K principal components
declare -A VARIANT=(
  [fast-a]="--config seed --epochs 30 --batch-size 512 --lr 2e-3 --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1"
  [fast-b]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1"
  [fast-c]="--config seed --epochs 20 --batch-size 512 --lr 1e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.dropout=0.3"
  [fast-d]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.order=norm-act"
  [fast-e]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set optim.weight_decay=0.05"
  [pca512]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.whitening=pca --set model.whitening_dims=512"
  [zca]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.whitening=zca"
  [flip]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set data.augment=[\"flip\"]"
  [flipcrop40]="--config seed --epochs 40 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set data.augment=[\"flip\",\"crop\"]"
  [drop03-40]="--config seed --epochs 40 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.dropout=0.3"
  [noaug-wide]="--config seed --epochs 30 --batch-size 512 --lr 1e-3 --set model.widths=[2048,1024,512] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.dropout=0.3 --set optim.weight_decay=0.05"
  [layernorm]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.norm=layer"
  [gelu]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.activation=gelu"
  [residual]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,1024,1024] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set model.residual=true"
  [cosine]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=cosine --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1"
  [ema998]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set optim.ema_decay=0.998"
  [ema99]="--config seed --epochs 20 --batch-size 512 --lr 2e-3 --set model.widths=[1024,512,256] --set optim.schedule=onecycle --set optim.warmup_epochs=2.0 --set optim.label_smoothing=0.1 --set optim.ema_decay=0.99"
  [flipcrop100]="$BEST_300 --epochs 100"
  [mixup100]="$BEST_300 --epochs 100 --set data.mix=mixup --set data.mix_alpha=0.2"
  [cutmix100]="$BEST_300 --epochs 100 --set data.mix=cutmix --set data.mix_alpha=1.0"
  [drop01-100]="$BEST_300 --epochs 100 --set model.dropout=0.1"
  [drop01-300]="$BEST_300 --set model.dropout=0.1"
  [noaug-bs256]="$FAST_B --batch-size 256"
  [noaug-ls02]="$FAST_B --set optim.label_smoothing=0.2"
  [noaug-wd01]="$FAST_B --set optim.weight_decay=0.1"
  [noaug-deep]="$FAST_B --set model.widths=[1024,1024,512,256]"
  [noaug-lr4e-3]="$FAST_B --lr 4e-3"
  [noaug-sam05]="$FAST_B --set optim.sam_rho=0.05"
  [noaug-indrop01]="$FAST_B --set model.input_dropout=0.1"
  [noaug-indrop02]="$FAST_B --set model.input_dropout=0.2"
  [noaug-bf16]="$FAST_B --set train.bf16=true"
  [noaug-sam02]="$FAST_B --set train.bf16=true --set optim.sam_rho=0.2"
  [noaug-zca-soft]="$FAST_B --set train.bf16=true --set model.whitening=zca --set model.whitening_eps=0.1 --set model.input_dropout=0.2"
  [noaug-wide-drop05]="$FAST_B --epochs 40 --set train.bf16=true --set model.widths=[2048,1024,512] --set model.dropout=0.5 --set model.input_dropout=0.2"
  [noaug-wide-drop05-80]="$FAST_B --epochs 80 --set train.bf16=true --set model.widths=[2048,1024,512] --set model.dropout=0.5 --set model.input_dropout=0.2"
  [noaug-wide-drop05-in03]="$FAST_B --epochs 40 --set train.bf16=true --set model.widths=[2048,1024,512] --set model.dropout=0.5 --set model.input_dropout=0.3"
  [noaug-wider]="$FAST_B --epochs 40 --set train.bf16=true --set model.widths=[4096,1024,512] --set model.dropout=0.5 --set model.input_dropout=0.2"
  [fast-bf16-30]="$FAST_B --epochs 30 --set train.bf16=true --set data.augment=[\"flip\"]"
  [bf16-500]="$BEST_300 --epochs 500 --set train.bf16=true"
  [noaug-proj128]="$NOAUG_40 $PROJECT=128"
  [noaug-proj256]="$NOAUG_40 $PROJECT=256"
  [noaug-proj512]="$NOAUG_40 $PROJECT=512"
  [noaug-proj256-indrop0]="$NOAUG_40 $PROJECT=256 --set model.input_dropout=0.0"
  [noaug-proj256-80]="$NOAUG_40 $PROJECT=256 --epochs 80"
  [noaug-proj256-indrop03]="$NOAUG_40 $PROJECT=256 --set model.input_dropout=0.3"
  [noaug-proj192]="$NOAUG_40 $PROJECT=192"
  [noaug-proj256-ls02]="$NOAUG_40 $PROJECT=256 --set optim.label_smoothing=0.2"
  [noaug-proj256-wd05]="$NOAUG_40 $PROJECT=256 --set optim.weight_decay=0.05"
  [noaug-proj256-drop06-60]="$NOAUG_40 $PROJECT=256 --set model.dropout=0.6 --epochs 60"
  [noaug-proj256-w3072]="$NOAUG_40 $PROJECT=256 --set model.widths=[3072,1536,768]"
  [noaug-proj256-bs256]="$NOAUG_40 $PROJECT=256 --batch-size 256"
  [noaug-proj256-ema]="$NOAUG_40 $PROJECT=256 --set optim.ema_decay=0.999"
  [noaug-proj256-ens2]="$NOAUG_40 $PROJECT=256 --set model.members=2"
  [noaug-proj256-ens3]="$NOAUG_40 $PROJECT=256 --set model.members=3"
  [proj256-100]="$BEST_500 $PROJECT=256 --epochs 100"
  [proj512-100]="$BEST_500 $PROJECT=512 --epochs 100"
  [proj512-700]="$BEST_500 $PROJECT=512 --epochs 700"
  [fast-proj256-crop50]="$BEST_500 $PROJECT=256 --epochs 50"
  [fast-proj512-crop50]="$BEST_500 $PROJECT=512 --epochs 50"
  [fast-proj256-flip50]="$FAST_B --epochs 50 --set train.bf16=true --set data.augment=[\"flip\"] $PROJECT=256"
)
names=("$@")
[ "${names[0]:-all}" = all ] && names=("${!VARIANT[@]}")
mkdir -p runs/sweep
for name in "${names[@]}"; do
  .venv/bin/cifar-mlp train ${VARIANT[$name]} --run-dir "runs/sweep/$name" --overwrite --quiet > "runs/sweep/$name.log" 2>&1 || echo "$name failed"
  echo "$name: $(tail -1 "runs/sweep/$name.log")"
done
