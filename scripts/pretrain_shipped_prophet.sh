#!/usr/bin/env bash
# Rebuild the shipped pretrained Prophet (prophrl_worldmodel.pretrained: sim_tiny_32px) from nothing:
# collect the simulated corpus and pretrain tiny_32px_start_frame on it.
#   bash scripts/pretrain_shipped_prophet.sh [CORPUS_DIR]      (. ./prophrl.env first)
# The shipped weights were trained on one GPU (DEVICE=cuda, the defaults below; see
# pretrained_models/README.md for the time it took). The corpus takes about 30 min on 2 CPU cores (JOBS=2);
# on a CPU the same training takes many hours: there, fewer steps and a smaller batch
# (e.g. DEVICE=cpu BATCH_SIZE=8 VAE_STEPS=8000 STEPS=18000, about 1 h on 2 cores) give a weaker model.
# The result replaces src/prophrl_worldmodel/prophrl_worldmodel/pretrained_models/sim_tiny_32px/; then its fidelity
# table:
#   python bench/prophet_fidelity.py --out outputs/fidelity_shipped --corpus CORPUS_DIR --pretrained sim_tiny_32px \
#       --adapt-steps 1000 --mode full --eval-episodes 10 --chunks 6
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/worldmodel_corpus_shipped}
OUT=src/prophrl_worldmodel/prophrl_worldmodel/pretrained_models/sim_tiny_32px
EPISODES=${EPISODES:-50}
JOBS=${JOBS:-2}
DEVICE=${DEVICE:-cuda}
BATCH_SIZE=${BATCH_SIZE:-128}
LR=${LR:-2e-3}
VAE_STEPS=${VAE_STEPS:-8000}
STEPS=${STEPS:-18000}

python scripts/collect_worldmodel_corpus.py --out "$CORPUS" --episodes "$EPISODES" --held-out ur5e_sim/door/agentview \
  --held-out-episodes 20 --views agentview sideview --jobs "$JOBS"
prophrl worldmodel pretrain --data "$CORPUS"/pretrain/* --config tiny_32px_start_frame --device "$DEVICE" \
  --batch-size "$BATCH_SIZE" --lr "$LR" --vae-steps "$VAE_STEPS" --steps "$STEPS" --seed 0 --out "$OUT" --overwrite \
  --log-dir "$CORPUS/tensorboard"
