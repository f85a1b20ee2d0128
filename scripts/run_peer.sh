#!/usr/bin/env bash
# The newer baselines (ReviewKD, OFD, CTKD, MLKD, KD + DOT) with their authors' per-pair values:
# one trial of each cell of experiments/peer_table.yaml (columns ReviewKD, OFD, CTKD, CTKD+LS,
# MLKD, MLKD+LS, KD+DOT), one line per cell. Every trial, on this machine's GPUs or on SLURM:
# python scripts/run_table.py experiments/peer_table.yaml.
#
# Values from ReviewKD: mdistiller configs/cifar100/reviewkd.yaml; -b per pair from
# dvlab-research/ReviewKD; OFD: mdistiller configs/cifar100/ofd.yaml; CTKD: zhengli97/CTKD
# scripts/run_cifar_distill.sh; CTKD+LS: logit-standardization-KD
# CTKD/scripts/run_cifar_distill.sh; MLKD: Jin-Ying/Multi-Level-Logit-Distillation
# configs/cifar100/ours/<pair>.yaml; MLKD+LS: logit-standardization-KD
# configs/cifar100/mlkd/<pair>.yaml and logs/MLKD/<log>; KD+DOT: mdistiller
# configs/cifar100/dot/*.yaml (the comment above each line names its file).
#
# Generated from experiments/peer_table.yaml by scripts/table_scripts.py --write: edit that, not
# this file.
#
# Every line runs even when one fails; the failed lines are listed at the end (exit status 1).
# Usage: bash scripts/run_peer.sh [extra train_student.py flags, e.g. --trial 2]
#   TEACHERS=PATTERN  where the teachers are, {t} standing for the teacher's name (default: the
#                     released ones of fetch_pretrained_teachers.sh,
#                     ./save/models/{t}_vanilla/ckpt_epoch_240.pth); those of run_cifar_vanilla.sh:
#                     TEACHERS='save/models/{t}_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth'
set -euo pipefail
# shellcheck source=scripts/every_line.sh
source "$(dirname "$0")/every_line.sh"
usage_on_help "$@"
run() {  # run TEACHER [train_student.py flags]
  local path_t
  path_t="$(teacher_path "$1")"
  shift
  line python train_student.py --path_t "$path_t" "$@"
}
# resnet56 -> resnet20, ReviewKD: reviewKD.sh
run resnet56 --model_s resnet20 --distill reviewkd --dataset cifar100 -r 1 -a 0 --reviewkd_warmup 20 -b 0.6 "$@"
# resnet56 -> resnet20, OFD
run resnet56 --model_s resnet20 --distill ofd --dataset cifar100 -r 1 -a 0 -b 0.001 --ofd_connector_kernel 1 "$@"
# resnet56 -> resnet20, CTKD
run resnet56 --model_s resnet20 --distill ctkd --dataset cifar100 -r 0.1 -a 0.9 -b 0 "$@"
# resnet56 -> resnet20, CTKD+LS
run resnet56 --model_s resnet20 --distill ctkd --dataset cifar100 -r 0.1 -a 9 -b 0 --logit_stand "$@"
# resnet56 -> resnet20, MLKD: ours/res56_res20.yaml
run resnet56 --model_s resnet20 --distill mlkd --dataset cifar100 -r 0.1 -a 0.9 -b 0.9 --kd_T 4 --learning_rate 0.025 --epochs 240 "$@"
# resnet56 -> resnet20, MLKD+LS: no log, its README command (K 9)
run resnet56 --model_s resnet20 --distill mlkd --dataset cifar100 -r 0.1 --kd_T 2 --logit_stand -a 9 -b 9 --learning_rate 0.025 --epochs 480 "$@"
# resnet56 -> resnet20, KD+DOT
run resnet56 --model_s resnet20 --distill kd --dataset cifar100 -r 0.1 -a 0.9 -b 0 --kd_T 4 --dot --dot_delta 0.075 "$@"
# resnet110 -> resnet32, ReviewKD: reviewKD.sh
run resnet110 --model_s resnet32 --distill reviewkd --dataset cifar100 -r 1 -a 0 --reviewkd_warmup 20 -b 1.0 "$@"
# resnet110 -> resnet32, OFD
run resnet110 --model_s resnet32 --distill ofd --dataset cifar100 -r 1 -a 0 -b 0.001 --ofd_connector_kernel 1 "$@"
# resnet110 -> resnet32, CTKD
run resnet110 --model_s resnet32 --distill ctkd --dataset cifar100 -r 0.1 -a 0.9 -b 0 "$@"
# resnet110 -> resnet32, CTKD+LS
run resnet110 --model_s resnet32 --distill ctkd --dataset cifar100 -r 0.1 -a 9 -b 0 --logit_stand "$@"
# resnet110 -> resnet32, MLKD: ours/res110_res32.yaml
run resnet110 --model_s resnet32 --distill mlkd --dataset cifar100 -r 0.1 -a 0.9 -b 0.9 --kd_T 4 --learning_rate 0.025 --epochs 240 "$@"
# resnet110 -> resnet32, MLKD+LS: mlkd,res110,res32,2,9.txt
run resnet110 --model_s resnet32 --distill mlkd --dataset cifar100 -r 0.1 --kd_T 2 --logit_stand -a 9 -b 9 --learning_rate 0.025 --epochs 480 "$@"
# resnet110 -> resnet32, KD+DOT
run resnet110 --model_s resnet32 --distill kd --dataset cifar100 -r 0.1 -a 0.9 -b 0 --kd_T 4 --dot --dot_delta 0.075 "$@"
# resnet32x4 -> resnet8x4, ReviewKD: reviewKD.sh
run resnet32x4 --model_s resnet8x4 --distill reviewkd --dataset cifar100 -r 1 -a 0 --reviewkd_warmup 20 -b 5.0 "$@"
# resnet32x4 -> resnet8x4, OFD
run resnet32x4 --model_s resnet8x4 --distill ofd --dataset cifar100 -r 1 -a 0 -b 0.001 --ofd_connector_kernel 1 "$@"
# resnet32x4 -> resnet8x4, CTKD
run resnet32x4 --model_s resnet8x4 --distill ctkd --dataset cifar100 -r 0.1 -a 0.9 -b 0 "$@"
# resnet32x4 -> resnet8x4, CTKD+LS
run resnet32x4 --model_s resnet8x4 --distill ctkd --dataset cifar100 -r 0.1 -a 9 -b 0 --logit_stand "$@"
# resnet32x4 -> resnet8x4, MLKD: ours/res32x4_res8x4.yaml
run resnet32x4 --model_s resnet8x4 --distill mlkd --dataset cifar100 -r 0.1 -a 0.9 -b 0.9 --kd_T 4 --learning_rate 0.025 --epochs 240 "$@"
# resnet32x4 -> resnet8x4, MLKD+LS: mlkd,resnet32x4,resnet8x4,2,9.txt
run resnet32x4 --model_s resnet8x4 --distill mlkd --dataset cifar100 -r 0.1 --kd_T 2 --logit_stand -a 9 -b 9 --learning_rate 0.025 --epochs 480 "$@"
# resnet32x4 -> resnet8x4, KD+DOT
run resnet32x4 --model_s resnet8x4 --distill kd --dataset cifar100 -r 0.1 -a 0.9 -b 0 --kd_T 4 --dot --dot_delta 0.075 "$@"
# resnet32x4 -> ShuffleV1, ReviewKD: reviewKD.sh
run resnet32x4 --model_s ShuffleV1 --distill reviewkd --dataset cifar100 -r 1 -a 0 --reviewkd_warmup 20 -b 5.0 "$@"
# resnet32x4 -> ShuffleV1, OFD
run resnet32x4 --model_s ShuffleV1 --distill ofd --dataset cifar100 -r 1 -a 0 -b 0.001 --ofd_connector_kernel 1 "$@"
# resnet32x4 -> ShuffleV1, CTKD
run resnet32x4 --model_s ShuffleV1 --distill ctkd --dataset cifar100 -r 0.1 -a 0.9 -b 0 "$@"
# resnet32x4 -> ShuffleV1, CTKD+LS
run resnet32x4 --model_s ShuffleV1 --distill ctkd --dataset cifar100 -r 0.1 -a 9 -b 0 --logit_stand "$@"
# resnet32x4 -> ShuffleV1, MLKD: ours/res32x4_shuv1.yaml
run resnet32x4 --model_s ShuffleV1 --distill mlkd --dataset cifar100 -r 0.1 -a 0.9 -b 0.9 --kd_T 4 --learning_rate 0.01 --epochs 960 "$@"
# resnet32x4 -> ShuffleV1, MLKD+LS: no log, its README command (K 9)
run resnet32x4 --model_s ShuffleV1 --distill mlkd --dataset cifar100 -r 0.1 --kd_T 2 --logit_stand -a 9 -b 9 --learning_rate 0.01 --epochs 960 "$@"
# resnet32x4 -> ShuffleV1, KD+DOT
run resnet32x4 --model_s ShuffleV1 --distill kd --dataset cifar100 -r 0.1 -a 0.9 -b 0 --kd_T 4 --dot --dot_delta 0.075 "$@"
# resnet32x4 -> ShuffleV2, ReviewKD: reviewKD.sh
run resnet32x4 --model_s ShuffleV2 --distill reviewkd --dataset cifar100 -r 1 -a 0 --reviewkd_warmup 20 -b 8.0 "$@"
# resnet32x4 -> ShuffleV2, OFD
run resnet32x4 --model_s ShuffleV2 --distill ofd --dataset cifar100 -r 1 -a 0 -b 0.001 --ofd_connector_kernel 1 "$@"
# resnet32x4 -> ShuffleV2, CTKD
run resnet32x4 --model_s ShuffleV2 --distill ctkd --dataset cifar100 -r 0.1 -a 0.9 -b 0 "$@"
# resnet32x4 -> ShuffleV2, CTKD+LS
run resnet32x4 --model_s ShuffleV2 --distill ctkd --dataset cifar100 -r 0.1 -a 9 -b 0 --logit_stand "$@"
# resnet32x4 -> ShuffleV2, MLKD: ours/res32x4_shuv2.yaml
run resnet32x4 --model_s ShuffleV2 --distill mlkd --dataset cifar100 -r 0.1 -a 0.9 -b 0.9 --kd_T 4 --learning_rate 0.01 --epochs 960 "$@"
# resnet32x4 -> ShuffleV2, MLKD+LS: mlkd,resnet32x4,ShuffleV2,2,6.txt
run resnet32x4 --model_s ShuffleV2 --distill mlkd --dataset cifar100 -r 0.1 --kd_T 2 --logit_stand -a 6 -b 6 --learning_rate 0.01 --epochs 960 "$@"
# resnet32x4 -> ShuffleV2, KD+DOT
run resnet32x4 --model_s ShuffleV2 --distill kd --dataset cifar100 -r 0.1 -a 0.9 -b 0 --kd_T 4 --dot --dot_delta 0.075 "$@"
# wrn_40_2 -> wrn_16_2, ReviewKD: reviewKD.sh
run wrn_40_2 --model_s wrn_16_2 --distill reviewkd --dataset cifar100 -r 1 -a 0 --reviewkd_warmup 20 -b 5.0 "$@"
# wrn_40_2 -> wrn_16_2, OFD
run wrn_40_2 --model_s wrn_16_2 --distill ofd --dataset cifar100 -r 1 -a 0 -b 0.001 --ofd_connector_kernel 1 "$@"
# wrn_40_2 -> wrn_16_2, CTKD
run wrn_40_2 --model_s wrn_16_2 --distill ctkd --dataset cifar100 -r 0.1 -a 0.9 -b 0 "$@"
# wrn_40_2 -> wrn_16_2, CTKD+LS
run wrn_40_2 --model_s wrn_16_2 --distill ctkd --dataset cifar100 -r 0.1 -a 9 -b 0 --logit_stand "$@"
# wrn_40_2 -> wrn_16_2, MLKD: ours/wrn40_2_wrn_16_2.yaml
run wrn_40_2 --model_s wrn_16_2 --distill mlkd --dataset cifar100 -r 0.1 -a 0.9 -b 0.9 --kd_T 4 --learning_rate 0.025 --epochs 240 "$@"
# wrn_40_2 -> wrn_16_2, MLKD+LS: mlkd,wrn_40_2,wrn_16_2,2,9.txt
run wrn_40_2 --model_s wrn_16_2 --distill mlkd --dataset cifar100 -r 0.1 --kd_T 2 --logit_stand -a 9 -b 9 --learning_rate 0.025 --epochs 480 "$@"
# wrn_40_2 -> wrn_16_2, KD+DOT
run wrn_40_2 --model_s wrn_16_2 --distill kd --dataset cifar100 -r 0.1 -a 0.9 -b 0 --kd_T 4 --dot --dot_delta 0.075 "$@"
# wrn_40_2 -> wrn_40_1, ReviewKD: reviewKD.sh
run wrn_40_2 --model_s wrn_40_1 --distill reviewkd --dataset cifar100 -r 1 -a 0 --reviewkd_warmup 20 -b 5.0 "$@"
# wrn_40_2 -> wrn_40_1, OFD
run wrn_40_2 --model_s wrn_40_1 --distill ofd --dataset cifar100 -r 1 -a 0 -b 0.001 --ofd_connector_kernel 1 "$@"
# wrn_40_2 -> wrn_40_1, CTKD
run wrn_40_2 --model_s wrn_40_1 --distill ctkd --dataset cifar100 -r 0.1 -a 0.9 -b 0 "$@"
# wrn_40_2 -> wrn_40_1, CTKD+LS
run wrn_40_2 --model_s wrn_40_1 --distill ctkd --dataset cifar100 -r 0.1 -a 9 -b 0 --logit_stand "$@"
# wrn_40_2 -> wrn_40_1, MLKD: ours/wrn40_2_wrn_40_1.yaml
run wrn_40_2 --model_s wrn_40_1 --distill mlkd --dataset cifar100 -r 0.1 -a 0.9 -b 0.9 --kd_T 4 --learning_rate 0.025 --epochs 240 "$@"
# wrn_40_2 -> wrn_40_1, MLKD+LS: mlkd,wrn_40_2,wrn_40_1,2,9.txt
run wrn_40_2 --model_s wrn_40_1 --distill mlkd --dataset cifar100 -r 0.1 --kd_T 2 --logit_stand -a 9 -b 9 --learning_rate 0.025 --epochs 480 "$@"
# wrn_40_2 -> wrn_40_1, KD+DOT
run wrn_40_2 --model_s wrn_40_1 --distill kd --dataset cifar100 -r 0.1 -a 0.9 -b 0 --kd_T 4 --dot --dot_delta 0.075 "$@"
# vgg13 -> vgg8, ReviewKD: mdistiller's default (no per-pair value)
run vgg13 --model_s vgg8 --distill reviewkd --dataset cifar100 -r 1 -a 0 --reviewkd_warmup 20 -b 5.0 "$@"
# vgg13 -> vgg8, OFD
run vgg13 --model_s vgg8 --distill ofd --dataset cifar100 -r 1 -a 0 -b 0.001 --ofd_connector_kernel 1 "$@"
# vgg13 -> vgg8, CTKD
run vgg13 --model_s vgg8 --distill ctkd --dataset cifar100 -r 0.1 -a 0.9 -b 0 "$@"
# vgg13 -> vgg8, CTKD+LS
run vgg13 --model_s vgg8 --distill ctkd --dataset cifar100 -r 0.1 -a 9 -b 0 --logit_stand "$@"
# vgg13 -> vgg8, MLKD: ours/vgg13_vgg8.yaml
run vgg13 --model_s vgg8 --distill mlkd --dataset cifar100 -r 0.1 -a 0.9 -b 0.9 --kd_T 4 --learning_rate 0.025 --epochs 240 "$@"
# vgg13 -> vgg8, MLKD+LS: mlkd,vgg13,vgg8,2,6.txt
run vgg13 --model_s vgg8 --distill mlkd --dataset cifar100 -r 0.1 --kd_T 2 --logit_stand -a 6 -b 6 --learning_rate 0.01 --epochs 480 "$@"
# vgg13 -> vgg8, KD+DOT
run vgg13 --model_s vgg8 --distill kd --dataset cifar100 -r 0.1 -a 0.9 -b 0 --kd_T 4 --dot --dot_delta 0.075 "$@"
finish
