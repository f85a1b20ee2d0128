#!/usr/bin/env bash
# The nine teacher/student pairs of the KDrefine table, with re-parameterizable (AMBB) students,
# with KDrefine's recipe spelled out: -r 0.1 -a 0.9 -b 0, learning rate 0.01 (its defaults).
# Every line runs even when one fails; the failed lines are listed at the end (exit status 1).
# Usage: bash scripts/run_kdrefine.sh [extra train_student.py flags, e.g. --trial 2 or -t ACB]
#   TEACHERS=PATTERN  where the teachers are, {t} standing for the teacher's name (default: the
#                     released ones of fetch_pretrained_teachers.sh,
#                     ./save/models/{t}_vanilla/ckpt_epoch_240.pth); those of run_cifar_vanilla.sh:
#                     TEACHERS='save/models/{t}_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth'
set -euo pipefail
# shellcheck source=scripts/every_line.sh
source "$(dirname "$0")/every_line.sh"
usage_on_help "$@"
pairs=(
  "wrn_40_2 repwrn_16_2"
  "wrn_40_2 repwrn_40_1"
  "resnet56 represnet20"
  "resnet110 represnet20"
  "resnet110 represnet32"
  "vgg13 repvgg8"
  "vgg13 repmobilenetv2"
  "ResNet50 repmobilenetv2"
  "ResNet50 repvgg8"
)
for pair in "${pairs[@]}"; do
  read -r teacher student <<< "$pair"
  path_t="$(teacher_path "$teacher")"
  line python train_student.py --path_t "$path_t" \
    --distill kdrefine --model_s "$student" -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
done
finish
