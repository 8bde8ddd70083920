#!/usr/bin/env bash
# Run one command on every worker of a TPU VM or pod slice; stream the logs, prefixed by worker.
USAGE="usage: tpu_scripts/launch.sh --project P --zone Z --name N [--accelerator-type A]
                            [--log FILE] [--run-id ID] [--env KEY=VALUE ...] [--no-distributed]
                            [--detach] [--dry-run] -- COMMAND [ARG ...]

Runs COMMAND in ~/steerjax, inside ~/steerjax-venv, on every worker at once (a pod slice needs
every host to run the same program). Each output line is prefixed with [worker K], written to
~/steerjax-logs/ID.log on the worker, streamed here and appended to FILE (default:
./tpu-logs/N-ID.log). The exit status is non-zero if the command failed on any worker.

Environment on the workers: STEERJAX_DISTRIBUTED=1 (steerjax then calls
jax.distributed.initialize(); --no-distributed leaves it unset), STEERJAX_DATA=~/steerjax-data
when setup.sh copied data there, and every --env KEY=VALUE.

A single COMMAND word is a shell command line (quote it: -- 'python a.py && python b.py');
several words are one command, each word quoted as given.
--detach   start the command in the background (nohup) and return; follow it with logs.sh."
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
log=""
run_id=""
envs=()
distributed=1
detach=0
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --log) need_value "$1" $#; log=$2; shift 2 ;;
    --log=*) log=${1#*=}; shift ;;
    --run-id) need_value "$1" $#; run_id=$2; shift 2 ;;
    --run-id=*) run_id=${1#*=}; shift ;;
    --env) need_value "$1" $#; envs+=("$2"); shift 2 ;;
    --env=*) envs+=("${1#*=}"); shift ;;
    --no-distributed) distributed=0; shift ;;
    --detach) detach=1; shift ;;
    *) unknown_arg "$1" ;;
  esac
done
require_args project zone name
if [[ ${#COMMAND_ARGS[@]} -eq 0 ]]; then
  usage_error "no command: put it after --, e.g. -- python experiments/quickstart/run.py"
fi
for kv in "${envs[@]+"${envs[@]}"}"; do
  if [[ ! $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    usage_error "--env $kv: use KEY=VALUE"
  fi
done
if [[ ! $run_id =~ ^[A-Za-z0-9_.-]*$ ]]; then
  usage_error "--run-id $run_id: use letters, digits, . _ -"
fi
run_id=${run_id:-$(date -u +%Y%m%d-%H%M%S)}
log=${log:-tpu-logs/$TPU_NAME-$run_id.log}

if [[ ${#COMMAND_ARGS[@]} -eq 1 ]]; then
  cmd=${COMMAND_ARGS[0]}
else
  cmd=$(join_quoted "${COMMAND_ARGS[@]}")
fi

exports=""
if [[ $distributed == 1 ]]; then
  exports+=" STEERJAX_DISTRIBUTED=1"
fi
for kv in "${envs[@]+"${envs[@]}"}"; do
  exports+=" ${kv%%=*}=$(shell_quote "${kv#*=}")"
done
remote_log="\$HOME/$REMOTE_LOGS/$run_id.log"
# the worker's index: TPU VM host names end in -w-K (other host names are used whole)
# shellcheck disable=SC2016
worker='export STEERJAX_WORKER=$(uname -n | sed "s/.*-w-\([0-9][0-9]*\)$/\1/")'
# shellcheck disable=SC2016
tag='sed -u "s/^/[worker $STEERJAX_WORKER] /"'
remote="set -o pipefail; cd \$HOME/$REMOTE_REPO && . \$HOME/$REMOTE_VENV/bin/activate"
remote+=" && if [ -d \$HOME/$REMOTE_DATA ]; then export STEERJAX_DATA=\$HOME/$REMOTE_DATA; fi"
if [[ -n $exports ]]; then
  remote+=" && export$exports"
fi
remote+=" && mkdir -p \$HOME/$REMOTE_LOGS && $worker"
if [[ $detach == 1 ]]; then
  remote+=" && { nohup bash -c $(shell_quote "set -o pipefail; { $cmd ; } 2>&1 | $tag") > $remote_log 2>&1 < /dev/null & }"
  remote+=" && echo \"[worker \$STEERJAX_WORKER] started in the background, log: $remote_log\""
else
  remote+=" && { $cmd ; } 2>&1 | $tag | tee -a $remote_log"
fi
run_or_print_logged "$log" "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --project="$TPU_PROJECT" \
  --zone="$TPU_ZONE" --worker=all --command="$remote"
