#!/usr/bin/env bash
# The nine teacher/student pairs of the KDrefine table, with re-parameterizable (AMBB) students,
# with KDrefine's recipe spelled out: -r 0.1 -a 0.9 -b 0, learning rate 0.01 (its defaults).
# Usage: bash scripts/run_kdrefine.sh [extra train_student.py flags, e.g. --trial 2 or -t ACB]
set -euo pipefail
M=./save/models
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
  python train_student.py --path_t "$M/${teacher}_vanilla/ckpt_epoch_240.pth" \
    --distill kdrefine --model_s "$student" -r 0.1 -a 0.9 -b 0 --learning_rate 0.01 "$@"
done
