#!/usr/bin/env bash
# Train the teachers of the experiment files (experiments/*.yaml) from scratch (240 epochs each),
# one line per teacher.
#
# Generated from experiments/*.yaml by scripts/table_scripts.py --write: edit that, not this file.
#
# Every line runs even when one fails; the failed lines are listed at the end (exit status 1).
# Usage: bash scripts/run_cifar_vanilla.sh [extra train_teacher.py flags]
#
# Each teacher lands in save/models/<name>_cifar100_lr_0.05_decay_0.0005_trial_0/ (another
# --trial changes the last part) with ckpt_epoch_240.pth, <name>_best.pth and <name>_last.pth.
# The distillation scripts read ./save/models/{t}_vanilla/ckpt_epoch_240.pth (the released
# teachers, fetch_pretrained_teachers.sh) unless TEACHERS says where yours are:
#   TEACHERS='save/models/{t}_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth' \
#     bash scripts/run_kdrefine.sh
set -euo pipefail
# shellcheck source=scripts/every_line.sh
source "$(dirname "$0")/every_line.sh"
usage_on_help "$@"
line python train_teacher.py --model resnet56 "$@"
line python train_teacher.py --model resnet110 "$@"
line python train_teacher.py --model resnet32x4 "$@"
line python train_teacher.py --model wrn_40_2 "$@"
line python train_teacher.py --model vgg13 "$@"
line python train_teacher.py --model ResNet50 "$@"
finish
