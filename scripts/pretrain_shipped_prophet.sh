#!/usr/bin/env bash
# Rebuild the shipped pretrained Prophet (prophrl_worldmodel.pretrained: sim_tiny_32px) from nothing:
# collect the simulated corpus and pretrain tiny_32px_start_frame on it.
#   bash scripts/pretrain_shipped_prophet.sh [CORPUS_DIR]      (. ./prophrl.env first)
# Interrupted, the same command goes on where it stopped (the corpus per combination, the training from
# CORPUS_DIR/pretrain_state, saved every 500 steps).
# On 2 CPU cores about 1.3 h: corpus 15-25 min (JOBS=2), VAE 9 min and denoiser 50 min (two threads). The result
# replaces src/prophrl_worldmodel/prophrl_worldmodel/pretrained_models/sim_tiny_32px/; then its fidelity table:
#   python bench/prophet_fidelity.py --out outputs/fidelity_shipped --corpus CORPUS_DIR --pretrained sim_tiny_32px \
#       --adapt-steps 1000 --mode full --eval-episodes 10 --chunks 6
# The variables below change the recipe (the shipped weights use the defaults), e.g. DEVICE=cuda BATCH_SIZE=128:
# a larger batch does not make up for fewer steps (7 min on an H200 at batch 128-512, 400-1300 denoiser steps,
# gave a weaker model than these defaults), so keep the step counts. MOTION_WEIGHT=1 pretrains with the
# motion-weighted loss (README: flow cosine 0.16 -> 0.42 on one demo's data for 0.1 dB); the shipped weights use 0.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/worldmodel_corpus_shipped}
OUT=src/prophrl_worldmodel/prophrl_worldmodel/pretrained_models/sim_tiny_32px
EPISODES=${EPISODES:-25}
JOBS=${JOBS:-2}
DEVICE=${DEVICE:-cpu}
BATCH_SIZE=${BATCH_SIZE:-8}
LR=${LR:-2e-3}
VAE_STEPS=${VAE_STEPS:-8000}
STEPS=${STEPS:-18000}
MOTION_WEIGHT=${MOTION_WEIGHT:-0}

python scripts/collect_worldmodel_corpus.py --out "$CORPUS" --episodes "$EPISODES" --held-out ur5e_sim/door/agentview \
  --held-out-episodes 20 --views agentview sideview --jobs "$JOBS"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} prophrl worldmodel pretrain --data "$CORPUS"/pretrain/* \
  --config tiny_32px_start_frame --device "$DEVICE" --batch-size "$BATCH_SIZE" --lr "$LR" --vae-steps "$VAE_STEPS" \
  --steps "$STEPS" --motion-weight "$MOTION_WEIGHT" --seed 0 --out "$OUT" --overwrite --log-dir "$CORPUS/tensorboard" \
  --state-dir "$CORPUS/pretrain_state"
