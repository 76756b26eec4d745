#!/usr/bin/env bash
# RL updates per hour, the demo's stage 6 of an older commit against this checkout's, in one run on one machine:
# each side runs `prophrl train` with its own code, its own DEMO_RL_CONFIG and DEMO_RL_THREADS (1 for a demo
# that has none: those ran stage 6 on one thread) and the world model and judge its own demo makes, the same SFT
# policy and start states; runs alternate (old, new, old, new, ...) so that a neighbour's load falls on both.
# Prints seconds per update (median over every run's updates after the first) and the ratio. The update's
# time does not depend on the weights (the demo's recipe imagines every chunk: no early termination), so the
# demos may be toy ones (`prophrl demo --sft-steps 10 --prophet-steps 10 ...`).
#
#   . ./prophrl.env
#   bash bench/rl_updates_ab.sh OLD_COMMIT POLICY DATA OLD_WORLD_MODEL OLD_JUDGE NEW_WORLD_MODEL NEW_JUDGE [RUNS] [UPDATES]
# e.g. issue 15's starting code against a current demo's models:
#   bash bench/rl_updates_ab.sh 67f5945 outputs/demo/policy_sft outputs/demo/dataset \
#        outputs/demo_67f5945/prophet outputs/demo_67f5945/judge outputs/demo/prophet outputs/demo/judge 3 4
set -euo pipefail
[ $# -ge 7 ] || { sed -n 2,12p "$0"; exit 2; }
OLD=$1 POLICY=$2 DATA=$3 OLD_WM=$4 OLD_JUDGE=$5 NEW_WM=$6 NEW_JUDGE=$7 RUNS=${8:-3} UPDATES=${9:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/rl_updates_ab.XXXXXX)
git -C "$ROOT" worktree add --detach -q "$WORK/old" "$OLD"
trap 'git -C "$ROOT" worktree remove --force "$WORK/old"' EXIT
old_path=$(ls -d "$WORK"/old/src/prophrl*/ | grep -v prophrl_msgs | tr '\n' ':')
unset OMP_NUM_THREADS  # each side's own thread count decides

config() {  # $1: side, $2: PYTHONPATH prefix; writes that code's DEMO_RL_CONFIG with UPDATES updates, prints its threads
  PYTHONPATH="$2${PYTHONPATH:-}" python - "$WORK/$1.json" "$UPDATES" <<'PY'
import json, sys
import prophrl.demo as demo
json.dump({**demo.DEMO_RL_CONFIG, "updates": int(sys.argv[2]), "checkpoint_every": 1000}, open(sys.argv[1], "w"))
print(getattr(demo, "DEMO_RL_THREADS", 1))
PY
}
old_threads=$(config old "$old_path")
new_threads=$(config new "")

for run in $(seq "$RUNS"); do
  for side in old new; do
    if [ $side = old ]; then pp=$old_path cfg_dir=$WORK/old/config wm=$OLD_WM judge=$OLD_JUDGE threads=$old_threads
    else pp="" cfg_dir=$ROOT/config wm=$NEW_WM judge=$NEW_JUDGE threads=$new_threads; fi
    echo "run $run: $side" >&2
    PYTHONPATH="$pp${PYTHONPATH:-}" PROPHRL_CONFIG_DIR=$cfg_dir python -m prophrl_trainer.train_cli \
      --policy "$POLICY" --world-model "$wm" --judge "$judge" --data "$DATA" --out "$WORK/${side}_$run" \
      --updates "$UPDATES" --config "$WORK/$side.json" --threads "$threads" --no-progress > "$WORK/${side}_$run.log" 2>&1
  done
done

python - "$WORK" "$RUNS" "$OLD" "$old_threads" "$new_threads" <<'PY'
import json, statistics, sys
from pathlib import Path
work, runs, old = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
threads = {"old": sys.argv[4], "new": sys.argv[5]}
keys = ("time/update_total_s", "time/world_model_s", "time/policy_s", "time/update_s")
rows = {}
for side in ("old", "new"):
    updates = [json.loads(line) for run in range(1, runs + 1)
               for line in (work / f"{side}_{run}" / "progress.jsonl").read_text().splitlines()[1:]]
    rows[side] = {k: statistics.median(u[k] for u in updates) for k in keys} | {"n": len(updates)}
print(f"\nRL update, demo stage 6: {old} vs this checkout ({runs} alternating runs each, first update of a run left out)")
print(f"{'code':12s} {'threads':>13s} {'updates':>7s} {'s/update':>9s} {'world model s':>14s} {'policy sampling s':>18s} "
      f"{'policy update s':>16s}")
for side, r in rows.items():
    shown = "torch default" if threads[side] == "0" else threads[side]
    print(f"{side:12s} {shown:>13s} {r['n']:7d} {r[keys[0]]:9.2f} {r[keys[1]]:14.2f} {r[keys[2]]:18.2f} "
          f"{r[keys[3]]:16.2f}")
ratio = rows["old"][keys[0]] / rows["new"][keys[0]]
print(f"updates per hour: old {3600 / rows['old'][keys[0]]:.0f}, new {3600 / rows['new'][keys[0]]:.0f} ({ratio:.2f}x)")
PY
