#!/usr/bin/env bash
# KDrefine with re-parameterizable (AMBB) students: one trial of each cell of
# experiments/kdrefine_table.yaml (columns KDrefine), one line per cell. Every trial, on this
# machine's GPUs or on SLURM: python scripts/run_table.py experiments/kdrefine_table.yaml.
#
# Values from KDrefine: KDrefine's README command and its train_student.py defaults
# (github.com/YujieZheng99/KDrefine, commit 84d9cdea).
#
# Generated from experiments/kdrefine_table.yaml by scripts/table_scripts.py --write: edit that,
# not this file.
#
# Every line runs even when one fails; the failed lines are listed at the end (exit status 1).
# Usage: bash scripts/run_kdrefine.sh [extra train_student.py flags, e.g. --trial 2]
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
# wrn_40_2 -> wrn_16_2, KDrefine
run wrn_40_2 --model_s repwrn_16_2 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
# wrn_40_2 -> wrn_40_1, KDrefine
run wrn_40_2 --model_s repwrn_40_1 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
# resnet56 -> resnet20, KDrefine
run resnet56 --model_s represnet20 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
# resnet110 -> resnet20, KDrefine
run resnet110 --model_s represnet20 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
# resnet110 -> resnet32, KDrefine
run resnet110 --model_s represnet32 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
# vgg13 -> vgg8, KDrefine
run vgg13 --model_s repvgg8 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
# vgg13 -> MobileNetV2, KDrefine
run vgg13 --model_s repmobilenetv2 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
# ResNet50 -> MobileNetV2, KDrefine
run ResNet50 --model_s repmobilenetv2 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
# ResNet50 -> vgg8, KDrefine
run ResNet50 --model_s repvgg8 --distill kdrefine --dataset cifar100 -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
finish
