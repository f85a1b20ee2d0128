#!/usr/bin/env bash
# DKD (Zhao et al., CVPR 2022) on every CIFAR-100 pair of its authors' configs, and DKD with logit
# standardization (Sun et al., CVPR 2024) with that paper's per-pair values.
# Every line runs even when one fails; the failed lines are listed at the end (exit status 1).
# Usage: bash scripts/run_dkd.sh [extra train_student.py flags, e.g. --trial 2]
#   TEACHERS=PATTERN  where the teachers are, {t} standing for the teacher's name (default: the
#                     released ones of fetch_pretrained_teachers.sh,
#                     ./save/models/{t}_vanilla/ckpt_epoch_240.pth); those of run_cifar_vanilla.sh:
#                     TEACHERS='save/models/{t}_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth'
#
# Our loss is r*cls + a*div + b*kd with kd = min(epoch/W, 1) * (A*TCKD + B*NCKD) at temperature T,
# so a config's DKD.CE_WEIGHT is -r, the KL term is off (-a 0) and the DKD term has weight 1 (-b 1);
# A, B, T, W are --dkd_alpha, --dkd_beta, --dkd_T, --dkd_warmup.
#
# Plain DKD: megvii-research/mdistiller (commit a08d46f), configs/cifar100/dkd/<pair>.yaml over the
# defaults of mdistiller/engine/cfg.py (CE_WEIGHT 1, ALPHA 1, BETA 8, T 4, WARMUP 20); the yamls
# only change BETA.
#
# DKD + logit standardization: sunshangquan/logit-standardization-KD (commit f6e5aa5). Its
# tools/train.py, with --logit-stand --base-temp Tb --kd-weight K, sets DKD.ALPHA = ALPHA*K,
# DKD.BETA = BETA*K and DKD.T = Tb, and keeps CE_WEIGHT (1) and WARMUP (20); its DKD.py Z-scores
# both logits before the DKD loss and leaves CE on the raw logits, as our --logit_stand does. So
# --dkd_alpha = K, --dkd_beta = BETA*K, --dkd_T = Tb, -r 1 (K is not a separate weight: it is folded
# into alpha and beta). The per-pair Tb, K, BETA are not in its yamls (those equal mdistiller's);
# they are in the names of its logs, logs/DKD/dkd,<teacher>,<student>,<Tb>,<K>[,<BETA>].txt (the
# README says the optional third value is BETA; without it BETA is the yaml's). BETA is taken as
# the value before the *K scaling (train.py merges command-line opts, then scales).
#
# Both repositories use our model names (their MobileNetV2 is mobile_half, vgg8/vgg13 the BN VGGs)
# and the schedule of our defaults (batch 64, 240 epochs, lr 0.05 / 0.01 for MobileNetV2 and the
# ShuffleNets, x0.1 at 150/180/210, weight decay 5e-4).
#
# Run folders: S_<s>_T_<t>_cifar100_dkd_r_1.0_a_0.0_b_1.0_<trial> for plain DKD and
# ..._dkd_ls_r_... with --logit_stand, so the two runs of a pair never share a folder.
# Pairs without a published logit-standardization value (no log in that repository) get the plain
# line only.
set -euo pipefail
# shellcheck source=scripts/every_line.sh
source "$(dirname "$0")/every_line.sh"
usage_on_help "$@"
run() {  # run TEACHER STUDENT [train_student.py flags]
  local path_t student=$2
  path_t="$(teacher_path "$1")"
  shift 2
  line python train_student.py --path_t "$path_t" --model_s "$student" --distill dkd "$@"
}

# mdistiller configs/cifar100/dkd/res56_res20.yaml (BETA 2.0)
run resnet56 resnet20     -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,resnet56,resnet20,3,18,2.0.txt (configs/cifar100/dkd/resnet56_resnet20.yaml)
run resnet56 resnet20     -r 1 -a 0 -b 1 --dkd_alpha 18 --dkd_beta 36 --dkd_T 3 --dkd_warmup 20 --logit_stand "$@"

# mdistiller configs/cifar100/dkd/res110_res32.yaml (BETA 2.0)
run resnet110 resnet32    -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,resnet110,resnet32,2,15,2.0.txt (configs/cifar100/dkd/resnet110_resnet32.yaml)
run resnet110 resnet32    -r 1 -a 0 -b 1 --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"

# mdistiller configs/cifar100/dkd/res32x4_res8x4.yaml (cfg.py defaults)
run resnet32x4 resnet8x4  -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,resnet32x4,resnet8x4,2,9.txt (configs/cifar100/dkd/resnet32x4_resnet8x4.yaml, BETA 8)
run resnet32x4 resnet8x4  -r 1 -a 0 -b 1 --dkd_alpha 9 --dkd_beta 72 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"

# mdistiller configs/cifar100/dkd/res32x4_shuv1.yaml (cfg.py defaults)
run resnet32x4 ShuffleV1  -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"

# mdistiller configs/cifar100/dkd/res32x4_shuv2.yaml (cfg.py defaults)
run resnet32x4 ShuffleV2  -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,resnet32x4,ShuffleV2,2,9.txt (configs/cifar100/dkd/resnet32x4_ShuffleV2.yaml, BETA 8)
run resnet32x4 ShuffleV2  -r 1 -a 0 -b 1 --dkd_alpha 9 --dkd_beta 72 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"

# mdistiller configs/cifar100/dkd/wrn40_2_wrn_16_2.yaml (BETA 6.0)
run wrn_40_2 wrn_16_2     -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 6 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,wrn_40_2,wrn_16_2,2,12,2.0.txt (configs/cifar100/dkd/wrn_40_2_wrn_16_2.yaml)
run wrn_40_2 wrn_16_2     -r 1 -a 0 -b 1 --dkd_alpha 12 --dkd_beta 24 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"

# mdistiller configs/cifar100/dkd/wrn40_2_wrn_40_1.yaml (BETA 6.0)
run wrn_40_2 wrn_40_1     -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 6 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,wrn_40_2,wrn_40_1,2,12,2.0.txt (configs/cifar100/dkd/wrn_40_2_wrn_40_1.yaml)
run wrn_40_2 wrn_40_1     -r 1 -a 0 -b 1 --dkd_alpha 12 --dkd_beta 24 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"

# mdistiller configs/cifar100/dkd/wrn40_2_shuv1.yaml (cfg.py defaults)
run wrn_40_2 ShuffleV1    -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"

# mdistiller configs/cifar100/dkd/vgg13_vgg8.yaml (BETA 6.0)
run vgg13 vgg8            -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 6 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,vgg13,vgg8,2,15,2.0.txt (configs/cifar100/dkd/vgg13_vgg8.yaml)
run vgg13 vgg8            -r 1 -a 0 -b 1 --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"

# mdistiller configs/cifar100/dkd/vgg13_mv2.yaml (BETA 6.0)
run vgg13 MobileNetV2     -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 6 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,vgg13,MobileNetV2,3,9,2.0.txt (configs/cifar100/dkd/vgg13_MobileNetV2.yaml)
run vgg13 MobileNetV2     -r 1 -a 0 -b 1 --dkd_alpha 9 --dkd_beta 18 --dkd_T 3 --dkd_warmup 20 --logit_stand "$@"

# mdistiller configs/cifar100/dkd/res50_mv2.yaml (cfg.py defaults)
run ResNet50 MobileNetV2  -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20 "$@"
# logit-standardization-KD logs/DKD/dkd,ResNet50,MobileNetV2,2,15,2.0.txt (configs/cifar100/dkd/ResNet50_MobileNetv2.yaml)
run ResNet50 MobileNetV2  -r 1 -a 0 -b 1 --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"

# Pairs of the logit-standardization README table with a DKD log but no DKD yaml in either
# repository (hence no plain-DKD config): cfg.py defaults with the log's Tb, K, BETA.
# logit-standardization-KD logs/DKD/dkd,resnet110,resnet20,2,15,2.0.txt
run resnet110 resnet20    -r 1 -a 0 -b 1 --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"
# logit-standardization-KD logs/DKD/dkd,resnet32x4,wrn_16_2,2,9,2.0.txt
run resnet32x4 wrn_16_2   -r 1 -a 0 -b 1 --dkd_alpha 9 --dkd_beta 18 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"
# logit-standardization-KD logs/DKD/dkd,resnet32x4,wrn_40_2,2,9,8.0.txt
run resnet32x4 wrn_40_2   -r 1 -a 0 -b 1 --dkd_alpha 9 --dkd_beta 72 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"
# logit-standardization-KD logs/DKD/dkd,wrn_40_2,resnet8x4,2,18,2.0.txt
run wrn_40_2 resnet8x4    -r 1 -a 0 -b 1 --dkd_alpha 18 --dkd_beta 36 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"
# logit-standardization-KD logs/DKD/dkd,wrn_40_2,MobileNetV2,2,15,2.0.txt
run wrn_40_2 MobileNetV2  -r 1 -a 0 -b 1 --dkd_alpha 15 --dkd_beta 30 --dkd_T 2 --dkd_warmup 20 --logit_stand "$@"
finish
