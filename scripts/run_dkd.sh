#!/usr/bin/env bash
# DKD and DKD + --logit_stand with their authors' per-pair values: one trial of each cell of
# experiments/dkd_table.yaml (columns DKD, DKD+LS), one line per cell. Every trial, on this
# machine's GPUs or on SLURM: python scripts/run_table.py experiments/dkd_table.yaml.
#
# Values from DKD: megvii-research/mdistiller (commit a08d46f), configs/cifar100/dkd/<file>;
# DKD+LS: sunshangquan/logit-standardization-KD (commit f6e5aa5), logs/DKD/<log> (the comment
# above each line names its file).
#
# Generated from experiments/dkd_table.yaml by scripts/table_scripts.py --write: edit that, not
# this file.
#
# Every line runs even when one fails; the failed lines are listed at the end (exit status 1).
# Usage: bash scripts/run_dkd.sh [extra train_student.py flags, e.g. --trial 2]
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
# resnet56 -> resnet20, DKD: res56_res20.yaml
run resnet56 --model_s resnet20 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2 --dkd_T 4 --dkd_warmup 20 "$@"
# resnet56 -> resnet20, DKD+LS: dkd,resnet56,resnet20,3,18,2.0.txt
run resnet56 --model_s resnet20 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 18 --dkd_beta 36 --dkd_T 3 --dkd_warmup 20 "$@"
# resnet110 -> resnet32, DKD: res110_res32.yaml
run resnet110 --model_s resnet32 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2 --dkd_T 4 --dkd_warmup 20 "$@"
# resnet110 -> resnet32, DKD+LS: dkd,resnet110,resnet32,2,15,2.0.txt
run resnet110 --model_s resnet32 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 "$@"
# resnet110 -> resnet20, DKD+LS: dkd,resnet110,resnet20,2,15,2.0.txt
run resnet110 --model_s resnet20 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 "$@"
# resnet32x4 -> resnet8x4, DKD: res32x4_res8x4.yaml
run resnet32x4 --model_s resnet8x4 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"
# resnet32x4 -> resnet8x4, DKD+LS: dkd,resnet32x4,resnet8x4,2,9.txt
run resnet32x4 --model_s resnet8x4 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 9 --dkd_beta 72 --dkd_T 2 --dkd_warmup 20 "$@"
# resnet32x4 -> ShuffleV1, DKD: res32x4_shuv1.yaml
run resnet32x4 --model_s ShuffleV1 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"
# resnet32x4 -> ShuffleV2, DKD: res32x4_shuv2.yaml
run resnet32x4 --model_s ShuffleV2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"
# resnet32x4 -> ShuffleV2, DKD+LS: dkd,resnet32x4,ShuffleV2,2,9.txt
run resnet32x4 --model_s ShuffleV2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 9 --dkd_beta 72 --dkd_T 2 --dkd_warmup 20 "$@"
# resnet32x4 -> wrn_16_2, DKD+LS: dkd,resnet32x4,wrn_16_2,2,9,2.0.txt
run resnet32x4 --model_s wrn_16_2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 9 --dkd_beta 18 --dkd_T 2 --dkd_warmup 20 "$@"
# resnet32x4 -> wrn_40_2, DKD+LS: dkd,resnet32x4,wrn_40_2,2,9,8.0.txt
run resnet32x4 --model_s wrn_40_2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 9 --dkd_beta 72 --dkd_T 2 --dkd_warmup 20 "$@"
# wrn_40_2 -> wrn_16_2, DKD: wrn40_2_wrn_16_2.yaml
run wrn_40_2 --model_s wrn_16_2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 6 --dkd_T 4 --dkd_warmup 20 "$@"
# wrn_40_2 -> wrn_16_2, DKD+LS: dkd,wrn_40_2,wrn_16_2,2,12,2.0.txt
run wrn_40_2 --model_s wrn_16_2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 12 --dkd_beta 24 --dkd_T 2 --dkd_warmup 20 "$@"
# wrn_40_2 -> wrn_40_1, DKD: wrn40_2_wrn_40_1.yaml
run wrn_40_2 --model_s wrn_40_1 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 6 --dkd_T 4 --dkd_warmup 20 "$@"
# wrn_40_2 -> wrn_40_1, DKD+LS: dkd,wrn_40_2,wrn_40_1,2,12,2.0.txt
run wrn_40_2 --model_s wrn_40_1 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 12 --dkd_beta 24 --dkd_T 2 --dkd_warmup 20 "$@"
# wrn_40_2 -> resnet8x4, DKD+LS: dkd,wrn_40_2,resnet8x4,2,18,2.0.txt
run wrn_40_2 --model_s resnet8x4 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 18 --dkd_beta 36 --dkd_T 2 --dkd_warmup 20 "$@"
# wrn_40_2 -> MobileNetV2, DKD+LS: dkd,wrn_40_2,MobileNetV2,2,15,2.0.txt
run wrn_40_2 --model_s MobileNetV2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 "$@"
# wrn_40_2 -> ShuffleV1, DKD: wrn40_2_shuv1.yaml
run wrn_40_2 --model_s ShuffleV1 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"
# vgg13 -> vgg8, DKD: vgg13_vgg8.yaml
run vgg13 --model_s vgg8 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 6 --dkd_T 4 --dkd_warmup 20 "$@"
# vgg13 -> vgg8, DKD+LS: dkd,vgg13,vgg8,2,15,2.0.txt
run vgg13 --model_s vgg8 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 "$@"
# vgg13 -> MobileNetV2, DKD: vgg13_mv2.yaml
run vgg13 --model_s MobileNetV2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 6 --dkd_T 4 --dkd_warmup 20 "$@"
# vgg13 -> MobileNetV2, DKD+LS: dkd,vgg13,MobileNetV2,3,9,2.0.txt
run vgg13 --model_s MobileNetV2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 9 --dkd_beta 18 --dkd_T 3 --dkd_warmup 20 "$@"
# ResNet50 -> MobileNetV2, DKD: res50_mv2.yaml
run ResNet50 --model_s MobileNetV2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"
# ResNet50 -> MobileNetV2, DKD+LS: dkd,ResNet50,MobileNetV2,2,15,2.0.txt
run ResNet50 --model_s MobileNetV2 --distill dkd --dataset cifar100 -r 1 -a 0 -b 1 --logit_stand --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 "$@"
finish
