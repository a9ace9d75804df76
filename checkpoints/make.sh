#!/usr/bin/env bash
# Rebuilds the shipped checkpoints. Run from the repository root: bash checkpoints/make.sh
set -euo pipefail
common="--dataset digits --members 3 --epochs 15 --batch-size 64 --quiet --force"
python -m parl_core train $common --method ce_only --seed 0   --out checkpoints/digits_ens_u.safetensors
python -m parl_core train $common --method parl    --seed 0   --out checkpoints/digits_parl.safetensors
# A separately seeded plain ensemble: the black-box surrogate.
python -m parl_core train $common --method ce_only --seed 100 --out checkpoints/digits_surrogate.safetensors
# The paper's baselines (issue 6), each with its paper's defaults (see parl_core/baselines.py).
# DVERGE warm-starts from the trained ENS_U above, as its reference trainer starts from a
# trained plain ensemble (--scratch instead of --init trains it from random weights).
python -m parl_core train $common --method adp    --seed 0 --out checkpoints/digits_adp.safetensors
python -m parl_core train $common --method gal    --seed 0 --out checkpoints/digits_gal.safetensors
python -m parl_core train $common --method dverge --seed 0 --init checkpoints/digits_ens_u.safetensors \
  --out checkpoints/digits_dverge.safetensors
# TRS (Yang et al. 2021, parl_core/trs.py): its smoothness ε ramps over the 15 epochs.
python -m parl_core train $common --method trs --seed 0 --param ramp_epochs=15 --out checkpoints/digits_trs.safetensors
