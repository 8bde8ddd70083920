#!/usr/bin/env bash
# Copy a results directory back from the workers of a TPU VM or pod slice.
USAGE="usage: tpu_scripts/copy_back.sh --project P --zone Z --name N --remote DIR [--local DIR]
                               [--workers LIST] [--accelerator-type A] [--dry-run]

Copies ~/steerjax/DIR (a run directory, relative to the checkout on the workers; absolute paths
are used as they are) to the local DIR (default: ./results/N/<basename of DIR>).
--workers LIST   which workers to copy from: 0 (default: steerjax writes results from process 0
                 only), or a comma-separated list such as 0,1,2,3; with more than one worker each
                 goes to its own LOCAL/worker-K directory."
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
remote=""
local_dir=""
workers=0
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --remote) need_value "$1" $#; remote=$2; shift 2 ;;
    --remote=*) remote=${1#*=}; shift ;;
    --local) need_value "$1" $#; local_dir=$2; shift 2 ;;
    --local=*) local_dir=${1#*=}; shift ;;
    --workers) need_value "$1" $#; workers=$2; shift 2 ;;
    --workers=*) workers=${1#*=}; shift ;;
    *) unknown_arg "$1" ;;
  esac
done
require_args project zone name
if [[ -z $remote ]]; then
  usage_error "missing --remote DIR (the run directory on the workers, e.g. runs/reliability-full)"
fi
if [[ ! $workers =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  usage_error "--workers $workers: use 0 or a list like 0,1,2,3"
fi
remote=${remote%/}
if [[ $remote != /* ]]; then
  remote=$REMOTE_REPO/$remote
fi
local_dir=${local_dir:-results/$TPU_NAME/$(basename "$remote")}

IFS=, read -r -a worker_list <<< "$workers"
for w in "${worker_list[@]}"; do
  dest=$local_dir
  if [[ ${#worker_list[@]} -gt 1 ]]; then
    dest=$local_dir/worker-$w
  fi
  # scp puts the remote directory inside an existing destination: copy into its parent
  run_or_print mkdir -p "$(dirname "$dest")"
  if [[ $TPU_DRY_RUN != 1 && -e $dest ]]; then
    printf 'error: %s exists; move it away or pass another --local\n' "$dest" >&2
    exit 1
  fi
  run_or_print "$GCLOUD" compute tpus tpu-vm scp --recurse "$TPU_NAME:$remote" "$dest" --project="$TPU_PROJECT" \
    --zone="$TPU_ZONE" --worker="$w"
done
