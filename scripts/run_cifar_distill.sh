#!/usr/bin/env bash
# Every registered distillation method with its published recipe (resnet32x4 -> resnet8x4), one
# line per method. Each line passes the recipe's weights -r/-a/-b explicitly: they are also the
# method's defaults (README, Distillation methods), so a line without them would train the same.
# The learning rate is the method's default.
#
# Generated from the method registry (each method's recipe, distiller_zoo/methods/) by
# scripts/table_scripts.py --write: edit that, not this file.
#
# Every line runs even when one fails; the failed lines are listed at the end (exit status 1).
# Usage: bash scripts/run_cifar_distill.sh [extra train_student.py flags, e.g. --trial 2]
#   TEACHER=FILE     the teacher checkpoint (default: the one fetch_pretrained_teachers.sh
#                    installs, ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth)
#   TEACHERS=PATTERN or your own teachers, {t} standing for the teacher's name, e.g. those of
#                    run_cifar_vanilla.sh:
#                    TEACHERS='save/models/{t}_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth'
#   STUDENT=NAME     the student (default resnet8x4)
set -euo pipefail
# shellcheck source=scripts/every_line.sh
source "$(dirname "$0")/every_line.sh"
usage_on_help "$@"
T="${TEACHER:-$(teacher_path resnet32x4)}"
S="${STUDENT:-resnet8x4}"
run() { line python train_student.py --path_t "$T" --model_s "$S" "$@"; }
run --distill abound      -r 1 -a 0 -b 1 "$@"
run --distill attention   -r 1 -a 0 -b 1000 "$@"
run --distill correlation -r 1 -a 0 -b 0.02 "$@"
run --distill crd         -r 1 -a 0 -b 0.8 "$@"
run --distill ctkd        -r 0.1 -a 0.9 -b 0 "$@"
run --distill dkd         -r 1 -a 0 -b 1 "$@"
run --distill factor      -r 1 -a 0 -b 200 "$@"
run --distill fsp         -r 1 -a 0 -b 50 "$@"
run --distill hint        -r 1 -a 0 -b 100 "$@"
run --distill kd          -r 0.1 -a 0.9 -b 0 "$@"
run --distill kdrefine    -r 0.1 -a 0.9 -b 0 "$@"
run --distill kdsvd       -r 1 -a 0 -b 1 "$@"
run --distill mlkd        -r 0.1 -a 0.9 -b 0.9 "$@"
run --distill nst         -r 1 -a 0 -b 50 "$@"
run --distill ofd         -r 1 -a 0 -b 0.001 "$@"
run --distill pkt         -r 1 -a 0 -b 30000 "$@"
run --distill reviewkd    -r 1 -a 0 -b 5 "$@"
run --distill rkd         -r 1 -a 0 -b 1 "$@"
run --distill semckd      -r 1 -a 1 -b 400 "$@"
run --distill similarity  -r 1 -a 0 -b 3000 "$@"
run --distill srrl        -r 1 -a 1 -b 1 "$@"
run --distill vid         -r 1 -a 0 -b 1 "$@"
finish
