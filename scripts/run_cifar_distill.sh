#!/usr/bin/env bash
# Every distillation method with the loss weights of the CRD benchmark (resnet32x4 -> resnet8x4).
# Usage: bash scripts/run_cifar_distill.sh [extra train_student.py flags, e.g. --trial 2]
set -euo pipefail
T="${TEACHER:-./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth}"
S="${STUDENT:-resnet8x4}"
run() { python train_student.py --path_t "$T" --model_s "$S" "$@"; }
run --distill kd          -r 0.1 -a 0.9 -b 0     "$@"
run --distill hint        -a 0 -b 100            "$@"
run --distill attention   -a 0 -b 1000           "$@"
run --distill similarity  -a 0 -b 3000           "$@"
run --distill correlation -a 0 -b 0.02           "$@"
run --distill vid         -a 0 -b 1              "$@"
run --distill rkd         -a 0 -b 1              "$@"
run --distill pkt         -a 0 -b 30000          "$@"
run --distill abound      -a 0 -b 1              "$@"
run --distill factor      -a 0 -b 200            "$@"
run --distill fsp         -a 0 -b 50             "$@"
run --distill nst         -a 0 -b 50             "$@"
run --distill crd         -a 0 -b 0.8            "$@"
run --distill kdsvd       -a 0 -b 1              "$@"
run --distill dkd         -r 1 -a 0 -b 1         "$@"
run --distill srrl        -r 1 -a 1 -b 1         "$@"
run --distill semckd      -r 1 -a 1 -b 400       "$@"
run --distill kdrefine    -r 0.1 -a 0.9 -b 0     "$@"
