# shellcheck shell=bash
# Sourced by the table scripts (run_cifar_vanilla.sh, run_cifar_distill.sh, run_kdrefine.sh,
# run_dkd.sh): every line of a table runs even when one fails; the failed lines are listed at the
# end, and the script then exits 1.
#   usage_on_help "$@"  -h or --help among the script's flags: print the script's header comment
#                       (its usage) once and exit 0
#   line CMD ARG...     run one line of the table, remember it when it fails; Ctrl-C stops the
#                       whole script
#   teacher_path NAME   NAME's teacher checkpoint: $TEACHERS with {t} replaced by NAME (for your
#                       own teachers), else RepDistiller's layout that fetch_pretrained_teachers.sh
#                       fills, ./save/models/NAME_vanilla/ckpt_epoch_240.pth
#   finish              after the last line: list the failed lines and exit 1, or say all finished

usage_on_help() {
  local arg
  for arg in "$@"; do
    if [ "$arg" = --help ] || [ "$arg" = -h ]; then
      awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
      exit 0
    fi
  done
}

lines_run=0
failed=()        # "(exit N) COMMAND" of each failed line
interrupted=0
trap 'interrupted=1' INT TERM  # runs once the line in progress has ended

line() {
  local cmd status=0
  printf -v cmd '%q ' "$@"
  cmd="${cmd% }"
  lines_run=$((lines_run + 1))
  if [ "$interrupted" = 0 ]; then
    echo "\$ $cmd"
    "$@" || status=$?
  fi
  if [ "$interrupted" = 1 ] || [ "$status" -eq 130 ]; then
    echo "error: interrupted at line $lines_run of $(basename "$0") ($cmd); the lines after it did not run" >&2
    exit 130
  fi
  [ "$status" -eq 0 ] || failed+=("(exit $status) $cmd")
}

teacher_path() {
  local fetched='./save/models/{t}_vanilla/ckpt_epoch_240.pth'
  local template="${TEACHERS:-$fetched}"
  if [[ $template != *'{t}'* ]]; then
    echo "error: TEACHERS=$template has no {t} (where the teacher's name goes), e.g." \
      "TEACHERS='save/models/{t}_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth'" >&2
    exit 2
  fi
  echo "${template//'{t}'/$1}"
}

finish() {
  local f
  if [ ${#failed[@]} -eq 0 ]; then
    echo "all $lines_run lines of $(basename "$0") finished"
    return 0
  fi
  for f in "${failed[@]}"; do echo "failed $f" >&2; done
  echo "error: ${#failed[@]} of $lines_run lines of $(basename "$0") failed (listed above; each one's own output says why)" >&2
  exit 1
}
