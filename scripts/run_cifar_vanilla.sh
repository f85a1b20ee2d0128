#!/usr/bin/env bash
# Train the CIFAR-100 teachers of the benchmark from scratch (240 epochs each).
# Usage: bash scripts/run_cifar_vanilla.sh [extra train_teacher.py flags]
set -euo pipefail
for model in wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50; do
  python train_teacher.py --model "$model" "$@"
done
