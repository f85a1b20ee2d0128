#!/usr/bin/env bash
# Fetch the public RepDistiller teacher checkpoints into save/models/<name>_vanilla/ckpt_epoch_240.pth
# (relative to the current directory) and check that each one loads into its architecture.
# Usage: bash scripts/fetch_pretrained_teachers.sh [name ...]   (default: all six teachers)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base_url="${TEACHER_BASE_URL:-http://shape2prog.csail.mit.edu/repo}"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50)

fetch() {  # fetch URL FILE: download to FILE.part, then rename (a failed download leaves nothing)
  if command -v curl >/dev/null 2>&1; then
    curl -fL --connect-timeout 20 --retry 2 -o "$2.part" "$1"
  else
    wget -q --timeout=20 -O "$2.part" "$1"
  fi && mv "$2.part" "$2"
}

for name in "${names[@]}"; do
  folder="save/models/${name}_vanilla"
  target="$folder/ckpt_epoch_240.pth"
  mkdir -p "$folder"
  if [ -s "$target" ]; then
    echo "have $target"
  elif ! fetch "$base_url/${name}_vanilla/ckpt_epoch_240.pth" "$target"; then
    rm -f "$target.part"
    echo "error: could not download the $name teacher from $base_url (offline?); put it at $target" >&2
    exit 1
  fi
done
files=()
for name in "${names[@]}"; do files+=("save/models/${name}_vanilla/ckpt_epoch_240.pth"); done
python "$here/check_teachers.py" "${files[@]}"
