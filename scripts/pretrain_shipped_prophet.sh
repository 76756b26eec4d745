#!/usr/bin/env bash
# Rebuild the shipped pretrained Prophet (prophrl_worldmodel.pretrained: sim_tiny_32px) from nothing:
# collect the simulated corpus and pretrain tiny_32px_start_frame on it.
#   bash scripts/pretrain_shipped_prophet.sh [CORPUS_DIR]      (. ./prophrl.env first)
# On 2 CPU cores about 1.3 h: corpus 15 min (one core), VAE 9 min and denoiser 50 min (two threads). The result
# replaces src/prophrl_worldmodel/prophrl_worldmodel/pretrained_models/sim_tiny_32px/; then its fidelity table:
#   python bench/prophet_fidelity.py --out outputs/fidelity_shipped --corpus CORPUS_DIR --pretrained sim_tiny_32px \
#       --adapt-steps 1000 --mode full --eval-episodes 10 --chunks 6
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/worldmodel_corpus_shipped}
OUT=src/prophrl_worldmodel/prophrl_worldmodel/pretrained_models/sim_tiny_32px
VAE_STEPS=${VAE_STEPS:-8000}
STEPS=${STEPS:-18000}

python scripts/collect_worldmodel_corpus.py --out "$CORPUS" --episodes 25 --held-out ur5e_sim/door/agentview \
  --held-out-episodes 20 --views agentview sideview
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} prophrl worldmodel pretrain --data "$CORPUS"/pretrain/* --config tiny_32px_start_frame \
  --vae-steps "$VAE_STEPS" --steps "$STEPS" --seed 0 --out "$OUT" --overwrite --log-dir "$CORPUS/tensorboard"
