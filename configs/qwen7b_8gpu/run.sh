#!/usr/bin/env bash
# The whole pipeline on a 7B model and one node of 8 GPUs: SFT -> seq2seq RM and scalar RM -> PPO
# with each. NOT run by this project (no GPU here); see README "What ran where".
# Needs the deepspeed extra and vLLM in the same environment (GPU build):
#   pip install torch && pip install --no-build-isolation -e '.[deepspeed]' && pip install vllm
# Run from the repository root:  MODEL=Qwen/Qwen2.5-7B-Instruct bash configs/qwen7b_8gpu/run.sh
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
DATA=${DATA:-PKU-Alignment/PKU-SafeRLHF}
OUT=${OUT:-runs/qwen7b}
C=configs/qwen7b_8gpu
launch() { accelerate launch --config_file configs/accelerate_deepspeed_zero3.yaml --num_processes 8 -m seq2seq_rm.cli "$@"; }

launch sft --model "$MODEL" --data "$DATA" --out "$OUT/sft" --config $C/sft.yaml
for kind in seq2seq scalar; do
  launch rm train --kind $kind --model "$OUT/sft" --data "$DATA" --out "$OUT/rm-$kind" --config $C/rm.yaml
done
for kind in seq2seq scalar; do
  launch ppo --policy "$OUT/sft" --rm "$OUT/rm-$kind" --prompts "$DATA" --split test --out "$OUT/ppo-$kind" \
    --config $C/ppo.yaml
done
