#!/usr/bin/env bash
# verl 0.9.x PPO (GAE) on one GPU node with a seq2seq-rm reward model as verl's reward manager: every
# response token gets its seq2seq RM reward (examples/verl/ppo_seq2seq_rm.yaml has the settings).
#
#   examples/verl/run_ppo_seq2seq_rm.sh POLICY_DIR RM_DIR PROMPTS [verl overrides, key=value ...]
#
# POLICY_DIR: the SFT policy (a save_pretrained folder with a chat template); RM_DIR: an RM folder from
# `seq2seq-rm rm train` trained from that policy (same tokenizer); PROMPTS: a prompt file in any format
# `seq2seq-rm ppo` reads. OUT (default runs/verl_ppo_seq2seq_rm) gets the parquet prompts and checkpoints.
# Needs an environment with verl 0.9.x (and its vLLM/FSDP extras on a GPU machine) and this project
# installed; see README, "Using the seq2seq RM in verl / OpenRLHF".
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
POLICY=$(realpath "$1")
RM=$(realpath "$2")
PROMPTS=$3
shift 3
OUT=${OUT:-runs/verl_ppo_seq2seq_rm}
PYTHON=${PYTHON:-python3}
NAME=${NAME:-$(basename "$OUT")}

"$PYTHON" -m seq2seq_rm.integrations.verl_data --prompts "$PROMPTS" --policy "$POLICY" --out "$OUT/data"

"$PYTHON" -m verl.trainer.main_ppo --config-path "$HERE" --config-name ppo_seq2seq_rm \
  data.train_files="$(realpath "$OUT/data/train.parquet")" \
  data.val_files="$(realpath "$OUT/data/val.parquet")" \
  actor_rollout_ref.model.path="$POLICY" \
  reward.reward_model.model_path="$RM" \
  trainer.experiment_name="$NAME" \
  trainer.default_local_dir="$(realpath -m "$OUT/checkpoints")" \
  "$@"
