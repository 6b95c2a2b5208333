#!/usr/bin/env bash
# Accuracy sweep behind the presets (issue: better MLP recipes). Each line trains one variant on the 45k train
# split; choices are made on validation accuracy only. Usage: experiments/sweep.sh NAME [NAME ...] (or "all").
# Results: runs/sweep/NAME/history.csv; summarise with: cifar-mlp compare runs/sweep/*
set -euo pipefail
cd "$(dirname "$0")/.."
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
  [flipcrop100]="--config best --epochs 100"
  [mixup100]="--config best --epochs 100 --set data.mix=mixup --set data.mix_alpha=0.2"
  [cutmix100]="--config best --epochs 100 --set data.mix=cutmix --set data.mix_alpha=1.0"
  [drop01-100]="--config best --epochs 100 --set model.dropout=0.1"
  [drop01-300]="--config best --set model.dropout=0.1"
  [noaug-bs256]="--config best-noaug --batch-size 256"
  [noaug-ls02]="--config best-noaug --set optim.label_smoothing=0.2"
  [noaug-wd01]="--config best-noaug --set optim.weight_decay=0.1"
  [noaug-deep]="--config best-noaug --set model.widths=[1024,1024,512,256]"
  [noaug-lr4e-3]="--config best-noaug --lr 4e-3"
  [noaug-sam05]="--config best-noaug --set optim.sam_rho=0.05"
  [noaug-indrop01]="--config best-noaug --set model.input_dropout=0.1"
  [noaug-indrop02]="--config best-noaug --set model.input_dropout=0.2"
  [noaug-bf16]="--config best-noaug --set train.bf16=true"
  [noaug-sam02]="--config best-noaug --set train.bf16=true --set optim.sam_rho=0.2"
  [noaug-zca-soft]="--config best-noaug --set train.bf16=true --set model.whitening=zca --set model.whitening_eps=0.1 --set model.input_dropout=0.2"
  [noaug-wide-drop05]="--config best-noaug --epochs 40 --set train.bf16=true --set model.widths=[2048,1024,512] --set model.dropout=0.5 --set model.input_dropout=0.2"
  [noaug-wide-drop05-80]="--config best-noaug --epochs 80 --set train.bf16=true --set model.widths=[2048,1024,512] --set model.dropout=0.5 --set model.input_dropout=0.2"
  [noaug-wide-drop05-in03]="--config best-noaug --epochs 40 --set train.bf16=true --set model.widths=[2048,1024,512] --set model.dropout=0.5 --set model.input_dropout=0.3"
  [fast-bf16-30]="--config fast --epochs 30 --set train.bf16=true"
)
names=("$@")
[ "${names[0]:-all}" = all ] && names=("${!VARIANT[@]}")
mkdir -p runs/sweep
for name in "${names[@]}"; do
  .venv/bin/cifar-mlp train ${VARIANT[$name]} --run-dir "runs/sweep/$name" --overwrite --quiet > "runs/sweep/$name.log" 2>&1 || echo "$name failed"
  echo "$name: $(tail -1 "runs/sweep/$name.log")"
done
