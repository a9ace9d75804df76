#!/usr/bin/env bash
# Rebuilds the shipped CIFAR-10 ensembles and their shipped black-box results.
# Run from the repository root with the CIFAR-10 folder under DATA (default ../shared/data,
# the team's 10k-image training subset): bash checkpoints/make_cifar.sh [DATA]
# About 55 minutes of training and 30 of evaluation on 2 CPU cores; each training writes its
# checkpoint every epoch, and an interrupted one continues with the same command + --resume.
set -euo pipefail
data=${1:-../shared/data}
common="--dataset cifar10 --data-root $data --members 3 --epochs 15 --batch-size 128 --lr 1e-3"
python -m parl_core train $common --method ce_only --seed 0 --out checkpoints/cifar10_ens_u.safetensors
python -m parl_core train $common --method parl --gamma1 1 --gamma2 0.5 --layers 7 --seed 0 \
  --out checkpoints/cifar10_parl.safetensors
# A separately seeded plain ensemble: the black-box surrogate.
python -m parl_core train $common --method ce_only --seed 100 --out checkpoints/cifar10_surrogate.safetensors
# The dashboard's CIFAR defaults: black-box from the surrogate, crafted once for both targets,
# on the first 1,000 test images of the canonical order (the embedded sample's images).
C=checkpoints
python -m parl_core evaluate $C/cifar10_parl.safetensors --target $C/cifar10_ens_u.safetensors \
  --surrogate $C/cifar10_surrogate.safetensors --n 1000 --steps 20 --restarts 1
# The closing table (also caches white-box PGD on the same images).
python -m bench.table_cifar
# The analysis pages' stored results (CKA, gradient cosines, per-layer cosines), then the full suite.
python -m parl_core prepare $C/cifar10_ens_u.safetensors $C/cifar10_parl.safetensors --only cka,cosdist,layercos
python -m bench.table_suite --dataset cifar10 --data-root ../shared/data
