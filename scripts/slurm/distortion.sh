#!/usr/bin/env bash
# Distortion extraction on a Slurm cluster: one shard per array task, then the merge.
#
#   scripts/slurm/distortion.sh --shards N --dir WORKDIR -o TABLE.safetensors \
#       [--sbatch OPTION]... -- DISTORTION-ARGS...
#
# Submits
#   1. a job array `sbatch --array=0-(N-1) --requeue`: task i runs
#        knapsec distortion DISTORTION-ARGS --shard i/N --resume -o WORKDIR/part-i.safetensors
#      (a task that is requeued, by preemption, a node failure or `scontrol requeue`, resumes
#      from its checkpoint WORKDIR/part-i.safetensors.partial: finished work units are not redone);
#   2. the merge, `sbatch --dependency=afterok:ARRAY`:
#        knapsec distortion merge WORKDIR/part-0.safetensors ... -o TABLE.safetensors
# and prints the two job ids on one line: `ARRAY_JOB_ID MERGE_JOB_ID`.
#
# Logs: WORKDIR/logs/part-i.log (appended to across requeues) and WORKDIR/logs/merge.log.
# Each `--sbatch OPTION` is passed to both submissions, e.g. `--sbatch --time=02:00:00
# --sbatch --cpus-per-task=8 --sbatch --gres=gpu:1`. The binary is `$KNAPSEC` (default:
# `knapsec` on PATH); the jobs inherit the environment of the submitting shell (sbatch's
# default `--export=ALL`), so run this script from `./setup.sh` or with LD_LIBRARY_PATH set.
set -euo pipefail

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { printf 'distortion.sh: %s\n' "$*" >&2; exit 2; }

knapsec_bin() { printf '%s' "${KNAPSEC:-knapsec}"; }

# --- inside the jobs -------------------------------------------------------------------------

if [ "${1:-}" = --task ]; then
  # --task N WORKDIR -- DISTORTION-ARGS...
  n=$2 dir=$3
  shift 4
  i=${SLURM_ARRAY_TASK_ID:?not run as a Slurm array task}
  printf '[%s] shard %s/%s, job %s_%s, restart %s, host %s\n' "$(date -u +%FT%TZ)" \
    "$i" "$n" "${SLURM_ARRAY_JOB_ID:-?}" "$i" "${SLURM_RESTART_COUNT:-0}" "$(hostname)" >&2
  exec "$(knapsec_bin)" distortion "$@" --shard "$i/$n" --resume \
    -o "$dir/part-$i.safetensors"
fi

if [ "${1:-}" = --merge ]; then
  # --merge N WORKDIR TABLE
  n=$2 dir=$3 table=$4
  parts=()
  for ((i = 0; i < n; i++)); do parts+=("$dir/part-$i.safetensors"); done
  printf '[%s] merging %s shards into %s\n' "$(date -u +%FT%TZ)" "$n" "$table" >&2
  exec "$(knapsec_bin)" distortion merge "${parts[@]}" -o "$table"
fi

# --- submission ------------------------------------------------------------------------------

shards="" dir="" table="" sbatch_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n | --shards) shards=${2:?}; shift 2 ;;
    -d | --dir) dir=${2:?}; shift 2 ;;
    -o | --output) table=${2:?}; shift 2 ;;
    --sbatch) sbatch_opts+=("${2:?}"); shift 2 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the distortion's own options go after --)" ;;
  esac
done
[ -n "$shards" ] && [ -n "$dir" ] && [ -n "$table" ] || die "--shards, --dir and -o are required"
[[ "$shards" =~ ^[1-9][0-9]*$ ]] || die "--shards must be a positive number, not '$shards'"
[ $# -gt 0 ] || die "no distortion options after -- (at least --arch NAME)"
for a in "$@"; do
  case "$a" in
    --shard | --shard=* | --resume | -o | --output | --output=*)
      die "'$a' is set per task by this script; leave it out" ;;
  esac
done
command -v sbatch >/dev/null || die "sbatch not found: run this on a Slurm submit host"

mkdir -p "$dir/logs"
dir=$(cd "$dir" && pwd)
case "$table" in /*) ;; *) table="$PWD/$table" ;; esac
self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

array=$(sbatch --parsable --job-name=knapsec-distortion \
  --array="0-$((shards - 1))" --requeue --open-mode=append \
  --output="$dir/logs/part-%a.log" "${sbatch_opts[@]}" \
  "$self" --task "$shards" "$dir" -- "$@")
array=${array%%;*}
merge=$(sbatch --parsable --job-name=knapsec-distortion-merge \
  --dependency="afterok$(for ((i = 0; i < shards; i++)); do printf ":%s_%s" "$array" "$i"; done)" --open-mode=append \
  --output="$dir/logs/merge.log" "${sbatch_opts[@]}" \
  "$self" --merge "$shards" "$dir" "$table")
merge=${merge%%;*}
printf 'submitted: shards job array %s (%s tasks), merge job %s -> %s\n' \
  "$array" "$shards" "$merge" "$table" >&2
printf '%s %s\n' "$array" "$merge"
