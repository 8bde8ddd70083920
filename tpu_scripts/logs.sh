#!/usr/bin/env bash
# Follow the log of a (detached) launch on every worker.
USAGE="usage: tpu_scripts/logs.sh --project P --zone Z --name N --run-id ID [--accelerator-type A]
                          [--log FILE] [--dry-run]

Streams ~/steerjax-logs/ID.log from every worker (lines already prefixed with [worker K]) until
interrupted, appending to FILE (default: ./tpu-logs/N-ID.log)."
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
run_id=""
log=""
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --run-id) need_value "$1" $#; run_id=$2; shift 2 ;;
    --run-id=*) run_id=${1#*=}; shift ;;
    --log) need_value "$1" $#; log=$2; shift 2 ;;
    --log=*) log=${1#*=}; shift ;;
    *) unknown_arg "$1" ;;
  esac
done
require_args project zone name
if [[ -z $run_id || ! $run_id =~ ^[A-Za-z0-9_.-]+$ ]]; then
  usage_error "--run-id ID is needed (the ID launch.sh printed; letters, digits, . _ -)"
fi
log=${log:-tpu-logs/$TPU_NAME-$run_id.log}
run_or_print_logged "$log" "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --project="$TPU_PROJECT" \
  --zone="$TPU_ZONE" --worker=all --command="tail -n +1 -F \$HOME/$REMOTE_LOGS/$run_id.log"
