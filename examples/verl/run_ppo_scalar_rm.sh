#!/usr/bin/env bash
# The baseline of run_ppo_seq2seq_rm.sh: the same verl PPO (GAE) run, same settings and code path, with the
# scalar Bradley-Terry RM (its score on each response's last token, zeros elsewhere).
#
#   examples/verl/run_ppo_scalar_rm.sh POLICY_DIR SCALAR_RM_DIR PROMPTS [verl overrides, key=value ...]
#
# (The reward manager reads the RM's kind from its folder; OUT defaults to runs/verl_ppo_scalar_rm.)
set -euo pipefail
export OUT=${OUT:-runs/verl_ppo_scalar_rm}
exec "$(dirname "$0")/run_ppo_seq2seq_rm.sh" "$@"
