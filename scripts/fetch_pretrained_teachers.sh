#!/usr/bin/env bash
# Fetch the public RepDistiller teacher checkpoints into save/models/<name>_vanilla/ckpt_epoch_240.pth
# (relative to the current directory) and check that each one loads into its architecture.
# Usage: bash scripts/fetch_pretrained_teachers.sh [name ...]   (default: all six teachers)
#
# Where from, in this order:
#   1. the original host: $TEACHER_BASE_URL/<name>_vanilla/ckpt_epoch_240.pth
#      (TEACHER_BASE_URL unset or empty: http://shape2prog.csail.mit.edu/repo, RepDistiller's);
#   2. for the teachers the first host did not give (or gave in a form that does not load): the
#      same files from the archive the DKD authors publish as a GitHub release asset (mdistiller's
#      README, "cifar_teachers.tar"), $TEACHER_MIRROR_URL (unset:
#      https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar,
#      which holds cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth for all six teachers; it is
#      downloaded whole, at most once per run; set TEACHER_MIRROR_URL empty to skip it).
# Downloads go to a temporary folder, and a checkpoint is moved into save/models only once it is
# complete and loads into its architecture (scripts/check_teachers.py): a failed or cut download
# leaves no file and no folder behind. Checkpoints already in place are kept (and checked). On
# failure the teachers it did get stay installed, and it prints one "error: ..." line on stderr
# and exits 1. Needs bash 4+, and curl or wget.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base_url="${TEACHER_BASE_URL:-http://shape2prog.csail.mit.edu/repo}"
base_url="${base_url%/}"
mirror_url="${TEACHER_MIRROR_URL-https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar}"
ckpt=ckpt_epoch_240.pth
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50)

die() { echo "error: $*" >&2; exit 1; }
target_of() { echo "save/models/$1_vanilla/$ckpt"; }

for name in "${names[@]}"; do  # -h or --help: the comment above, once
  if [ "$name" = --help ] || [ "$name" = -h ]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
  fi
done
for name in "${names[@]}"; do
  [[ $name =~ ^[A-Za-z0-9_]+$ ]] || die "'$name' is not a teacher name (such as resnet56)"
done
py="$(command -v python || command -v python3)" || die "python is not installed"
if command -v curl >/dev/null 2>&1; then
  downloader=curl
elif command -v wget >/dev/null 2>&1; then
  downloader=wget
else
  downloader=""
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch_teachers.XXXXXX")"
created=()  # folders this script made, outermost first: removed at exit if still empty
partial=""  # the file being moved into place, if any
cleanup() {
  local i
  [ -z "$partial" ] || rm -f "$partial"
  for ((i = ${#created[@]} - 1; i >= 0; i--)); do rmdir "${created[i]}" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

reason=""  # why the last fetch failed
rc=0       # the downloader's exit status of the last fetch
fetch() {  # fetch URL FILE: download URL to FILE, which exists only once the download is complete
  local url=$1 out=$2 log="$tmp/download.log"
  rc=0
  rm -f "$out.part"
  if [ "$downloader" = curl ]; then
    curl -fsSL --connect-timeout 20 --retry 2 -o "$out.part" "$url" 2>"$log" || rc=$?
  elif [ "$downloader" = wget ]; then
    wget -nv --timeout=20 --tries=3 -O "$out.part" "$url" 2>"$log" || rc=$?
  else
    reason="neither curl nor wget is installed"
    rc=127
    return 1
  fi
  if [ "$rc" -eq 0 ] && [ -s "$out.part" ]; then
    mv -f "$out.part" "$out"
    return 0
  fi
  rm -f "$out.part"
  if [ "$rc" -eq 0 ]; then
    reason="the download was empty"
  else
    reason="$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | tr -d '\r')" || true
    [ -n "$reason" ] || reason="$downloader exited with status $rc"
  fi
  return 1
}

stage="$tmp/stage"  # the downloads, laid out as save/models/<name>_vanilla/<ckpt> under it
check() {  # check FILE...: the files load into their architectures
  "$py" "$here/check_teachers.py" "$@" >"$tmp/check.out" 2>"$tmp/check.err"
}
show() {  # the ok lines of the last check, with the staged files under their final names
  local line
  while IFS= read -r line; do printf '%s\n' "${line//"$stage/"/}"; done <"$tmp/check.out"
}
last_error() {  # the last line of the last check's errors
  local m
  m="$(grep -v '^[[:space:]]*$' "$tmp/check.err" | tail -n 1 | tr -d '\r')" || true
  m="${m//"$stage/"/}"
  echo "${m#error: }"
}
contains() { local x=$1 y; shift; for y in "$@"; do [ "$y" != "$x" ] || return 0; done; return 1; }
without() {  # without NAME LIST...: LIST without NAME, one per line
  local x=$1 y; shift; for y in "$@"; do [ "$y" = "$x" ] || echo "$y"; done
}

host_got=()     # staged from the original host
mirror_got=()   # staged from the mirror archive (the last pass)
loaded=()       # staged and loads: to install
retry=()        # came from the original host but does not load: to take from the mirror
host_reason=""
mirror_reason=""
mirror_state=""  # "", ok (archive listed in $tmp/mirror.list) or failed

from_host() {  # from_host NAME...: download each from the original host into the stage
  local name out
  for name in "$@"; do
    out="$stage/$(target_of "$name")"
    mkdir -p "$(dirname "$out")"
    echo "downloading the $name teacher from $base_url"
    if fetch "$base_url/${name}_vanilla/$ckpt" "$out"; then
      host_got+=("$name")
    else
      host_reason="$reason"
      echo "note: $base_url failed: $reason"
      # not an HTTP error (curl 22, wget 8): the host is unreachable, so skip it for the rest
      if { [ "$downloader" = curl ] && [ "$rc" -ne 22 ]; } || { [ "$downloader" = wget ] && [ "$rc" -ne 8 ]; }; then
        return 0
      fi
    fi
  done
}

from_mirror() {  # from_mirror NAME...: take each from the mirror archive (downloaded once)
  local name member out i members=() found=()
  mirror_got=()
  [ $# -gt 0 ] || return 0
  if [ -z "$mirror_url" ]; then
    mirror_reason="not tried (TEACHER_MIRROR_URL is empty)"
    return 0
  fi
  [ "$mirror_state" != failed ] || return 0
  if [ -z "$mirror_state" ]; then
    echo "downloading $* from the mirror $mirror_url"
    mirror_state=failed
    if ! fetch "$mirror_url" "$tmp/mirror.tar"; then
      mirror_reason="$reason"
      return 0
    fi
    if ! tar -tf "$tmp/mirror.tar" >"$tmp/mirror.list" 2>/dev/null; then
      mirror_reason="the download is not a readable tar archive"
      rm -f "$tmp/mirror.tar"
      return 0
    fi
    mirror_state=ok
  fi
  for name in "$@"; do  # members <anything>/<name>_vanilla/<ckpt> (cifar_teachers/... in mdistiller's)
    member="$(grep -m 1 -E "^(\./)?([^/]+/)*${name}_vanilla/ckpt_epoch_240\.pth\$" "$tmp/mirror.list")" || true
    case "/$member/" in
      //|*/../*) mirror_reason="the archive has no ${name}_vanilla/$ckpt" ;;
      *) members+=("$member"); found+=("$name") ;;
    esac
  done
  [ ${#members[@]} -gt 0 ] || return 0
  rm -rf "$tmp/untar"
  mkdir -p "$tmp/untar"
  if ! tar -xf "$tmp/mirror.tar" -C "$tmp/untar" "${members[@]}" 2>/dev/null; then
    mirror_reason="could not extract ${members[*]} from the archive"
    return 0
  fi
  for i in "${!found[@]}"; do
    out="$stage/$(target_of "${found[i]}")"
    mkdir -p "$(dirname "$out")"
    mv -f "$tmp/untar/${members[i]}" "$out"
    mirror_got+=("${found[i]}")
  done
}

reject() {  # reject NAME WHY: a staged checkpoint that does not load
  rm -f "$stage/$(target_of "$1")"
  if contains "$1" ${host_got[@]+"${host_got[@]}"}; then
    echo "note: the $1 teacher from $base_url does not load: $2"
    host_reason="its download does not load ($2)"
    mapfile -t host_got < <(without "$1" "${host_got[@]}")
    retry+=("$1")
  else
    echo "note: the $1 teacher from the mirror does not load: $2"
    mirror_reason="the archive's checkpoint does not load ($2)"
  fi
}

accept() {  # accept NAME...: the staged teachers that load go to `loaded`, the others are rejected;
            # the first call also checks the checkpoints already in place (all in one check)
  local name f files=() mine=(${unchecked[@]+"${unchecked[@]}"})
  unchecked=()
  for name in "$@"; do files+=("$stage/$(target_of "$name")"); done
  local total=$((${#mine[@]} + ${#files[@]}))
  [ "$total" -gt 0 ] || return 0
  if check ${mine[@]+"${mine[@]}"} ${files[@]+"${files[@]}"}; then  # the usual case
    show
    loaded+=("$@")
    return 0
  fi
  for f in ${mine[@]+"${mine[@]}"}; do  # which of them failed (one more check each)
    if [ "$total" -eq 1 ] || ! check "$f"; then
      have_error="$(last_error)"
      [ -n "$have_error" ] || have_error="$f does not load"
    else
      show
    fi
  done
  for name in "$@"; do
    if [ "$total" -eq 1 ] || ! check "$stage/$(target_of "$name")"; then
      reject "$name" "$(last_error)"
    else
      show
      loaded+=("$name")
    fi
  done
}

have=()
need=()
for name in "${names[@]}"; do
  if [ -s "$(target_of "$name")" ]; then
    echo "have $(target_of "$name")"
    have+=("$(target_of "$name")")
  else
    need+=("$name")
  fi
done

unchecked=(${have[@]+"${have[@]}"})  # checked with the first downloads
have_error=""
if [ ${#need[@]} -gt 0 ]; then
  from_host "${need[@]}"                        # 1. the original host, one file per teacher
  left=()
  for name in "${need[@]}"; do contains "$name" ${host_got[@]+"${host_got[@]}"} || left+=("$name"); done
  from_mirror ${left[@]+"${left[@]}"}           # 2. the mirror archive for the others
fi
accept ${host_got[@]+"${host_got[@]}"} ${mirror_got[@]+"${mirror_got[@]}"}
if [ ${#retry[@]} -gt 0 ]; then                   # host files that do not load: the mirror's
  from_mirror "${retry[@]}"
  accept ${mirror_got[@]+"${mirror_got[@]}"}
fi

# install what loads: move it next to its target, then rename (atomic within the folder)
for name in ${loaded[@]+"${loaded[@]}"}; do
  folder="save/models/${name}_vanilla"
  new=()
  p="$folder"
  while [ ! -d "$p" ]; do new=("$p" ${new[@]+"${new[@]}"}); p="$(dirname "$p")"; done
  mkdir -p "$folder"
  created+=(${new[@]+"${new[@]}"})
  partial="$folder/.$ckpt.part.$$"
  mv -f "$stage/$(target_of "$name")" "$partial" || die "could not write $(target_of "$name") (disk full?)"
  mv -f "$partial" "$(target_of "$name")"
  partial=""
  echo "installed $(target_of "$name")"
done

missing=()
for name in ${need[@]+"${need[@]}"}; do contains "$name" ${loaded[@]+"${loaded[@]}"} || missing+=("$name"); done
if [ ${#missing[@]} -gt 0 ]; then
  where="save/models/<name>_vanilla/$ckpt"
  [ ${#missing[@]} -gt 1 ] || where="$(target_of "${missing[0]}")"
  die "could not get the ${missing[*]} teacher(s): $base_url: ${host_reason:-failed}; mirror ${mirror_url:-(none)}: ${mirror_reason:-failed}; put the checkpoint at $where"
fi

[ -z "$have_error" ] || die "$have_error"
