# shellcheck shell=bash disable=SC2034  # (E2E_OPTIONS is read by the sourcing script)
# The end-to-end flow shared by the e2e_*.sh scripts: create -> setup -> launch -> copy back -> delete.
# The sourcing script sets EXPERIMENT (a path under experiments/) and USAGE, then calls e2e_main "$@".

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

E2E_OPTIONS="Options:
  --model HUB_ID       the model (required), e.g. HuggingFaceTB/SmolLM2-135M-Instruct
  --data DIR           local data directory copied to the workers (default: \$STEERJAX_DATA; required)
  --out DIR            run directory on the workers, relative to the checkout (default: runs/NAME-EXP)
  --local DIR          where the results land here (default: results/NAME/<basename of --out>)
  --keep               do not delete the TPU VM at the end (to inspect it, or resume a failed run)
  --spot | --preemptible | --version V    passed to create.sh
  --repo-url URL | --ref REF | --libtpu-index URL    passed to setup.sh
  --env KEY=VALUE      passed to launch.sh (e.g. HF_TOKEN for gated models; repeatable)
  -- ARGS              more arguments for the experiment (e.g. -- --dtype bfloat16)
The TPU VM is deleted at the end even when a step failed, unless --keep; results copied back
before that. Exit status: that of the first step that failed."

e2e_main() {
  parse_common_args "$@"
  local model="" data=${STEERJAX_DATA:-} out="" local_dir="" keep=0
  local create_args=() setup_args=() launch_args=()
  set -- "${REST[@]+"${REST[@]}"}"
  while [[ $# -gt 0 ]]; do
    case $1 in
      --model) need_value "$1" $#; model=$2; shift 2 ;;
      --model=*) model=${1#*=}; shift ;;
      --data) need_value "$1" $#; data=$2; shift 2 ;;
      --data=*) data=${1#*=}; shift ;;
      --out) need_value "$1" $#; out=$2; shift 2 ;;
      --out=*) out=${1#*=}; shift ;;
      --local) need_value "$1" $#; local_dir=$2; shift 2 ;;
      --local=*) local_dir=${1#*=}; shift ;;
      --keep) keep=1; shift ;;
      --spot | --preemptible) create_args+=("$1"); shift ;;
      --version) need_value "$1" $#; create_args+=("$1" "$2"); shift 2 ;;
      --repo-url | --ref | --libtpu-index) need_value "$1" $#; setup_args+=("$1" "$2"); shift 2 ;;
      --env) need_value "$1" $#; launch_args+=("$1" "$2"); shift 2 ;;
      *) unknown_arg "$1" ;;
    esac
  done
  require_args project zone accelerator-type name
  if [[ -z $model ]]; then
    usage_error "missing --model (a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct)"
  fi
  if [[ -z $data ]]; then
    usage_error "missing --data DIR (or STEERJAX_DATA): the experiments read their datasets from it"
  fi
  local exp_name
  exp_name=$(basename "$(dirname "$EXPERIMENT")")
  out=${out:-runs/$TPU_NAME-$exp_name}
  local run_id
  run_id=$exp_name-$(date -u +%Y%m%d-%H%M%S)
  local cmd
  cmd=$(join_quoted python "$EXPERIMENT" --preset full --model "$model" --out "$out" \
    "${COMMAND_ARGS[@]+"${COMMAND_ARGS[@]}"}")
  common_args
  local copy_args=(--remote "$out")
  if [[ -n $local_dir ]]; then
    copy_args+=(--local "$local_dir")
  fi

  local status=0 rc
  e2e_step "1/5 create" "$TPU_SCRIPTS_DIR/create.sh" "${COMMON[@]}" "${create_args[@]+"${create_args[@]}"}" \
    || return $?
  e2e_step "2/5 setup" "$TPU_SCRIPTS_DIR/setup.sh" "${COMMON[@]}" --data "$data" \
    "${setup_args[@]+"${setup_args[@]}"}" || status=$?
  if [[ $status == 0 ]]; then
    e2e_step "3/5 launch" "$TPU_SCRIPTS_DIR/launch.sh" "${COMMON[@]}" --run-id "$run_id" \
      "${launch_args[@]+"${launch_args[@]}"}" -- "$cmd" || status=$?
    # a failed run may have finished chunks worth keeping (and resuming): copy back anyway
    e2e_step "4/5 copy back" "$TPU_SCRIPTS_DIR/copy_back.sh" "${COMMON[@]}" "${copy_args[@]}" \
      || { rc=$?; [[ $status != 0 ]] || status=$rc; }
  fi
  if [[ $keep == 1 ]]; then
    printf '# 5/5 delete: skipped (--keep); delete later with tpu_scripts/delete.sh\n'
  else
    e2e_step "5/5 delete" "$TPU_SCRIPTS_DIR/delete.sh" "${COMMON[@]}" || { rc=$?; [[ $status != 0 ]] || status=$rc; }
  fi
  return "$status"
}

# e2e_step TITLE SCRIPT ARGS...: run one step, announcing it.
e2e_step() {
  printf '# %s\n' "$1"
  shift
  "$@"
}
