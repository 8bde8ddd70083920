# shellcheck shell=bash disable=SC2034  # (variables here are read by the scripts that source this file)
# Shared by every script in tpu_scripts/: argument parsing, defaults, dry-run, gcloud helpers.
#
# Common flags (each also read from an environment variable):
#   --project P            TPU_PROJECT            Google Cloud project
#   --zone Z               TPU_ZONE               zone, e.g. us-central2-b
#   --accelerator-type A   TPU_ACCELERATOR_TYPE   e.g. v4-8, v4-32, v5litepod-16, v6e-8
#   --name N               TPU_NAME               TPU VM / pod slice name
#   --dry-run              TPU_DRY_RUN=1          print every command, run nothing (needs no gcloud)
# GCLOUD (default: gcloud) names the gcloud binary.
#
# A script sets USAGE (its help text), sources this file, calls parse_common_args "$@", then
# reads its own flags from the REST array and calls require_args with what it needs.

set -euo pipefail

TPU_PROJECT=${TPU_PROJECT:-}
TPU_ZONE=${TPU_ZONE:-}
TPU_ACCELERATOR_TYPE=${TPU_ACCELERATOR_TYPE:-}
TPU_NAME=${TPU_NAME:-}
TPU_DRY_RUN=${TPU_DRY_RUN:-0}
GCLOUD=${GCLOUD:-gcloud}
TPU_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TPU_SCRIPTS_DIR/.." && pwd)

# On every worker: where the code, the virtual environment, the data and the logs live
# (relative to the home directory).
REMOTE_REPO=steerjax
REMOTE_VENV=steerjax-venv
REMOTE_DATA=steerjax-data
REMOTE_LOGS=steerjax-logs

REST=()
COMMAND_ARGS=()
COMMON=()

usage() {
  printf '%s\n' "$USAGE"
}

# usage_error MESSAGE: print the message and the usage to stderr, exit 2.
usage_error() {
  printf 'error: %s\n\n' "$1" >&2
  usage >&2
  exit 2
}

# need_value FLAG ARGC: a flag that takes a value must have one.
need_value() {
  if [[ $2 -lt 2 ]]; then
    usage_error "$1 needs a value"
  fi
}

# parse_common_args "$@": sets TPU_* from the common flags; other arguments go to REST, and
# whatever follows a literal -- goes to COMMAND_ARGS.
parse_common_args() {
  REST=()
  COMMAND_ARGS=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --project) need_value "$1" $#; TPU_PROJECT=$2; shift 2 ;;
      --project=*) TPU_PROJECT=${1#*=}; shift ;;
      --zone) need_value "$1" $#; TPU_ZONE=$2; shift 2 ;;
      --zone=*) TPU_ZONE=${1#*=}; shift ;;
      --accelerator-type) need_value "$1" $#; TPU_ACCELERATOR_TYPE=$2; shift 2 ;;
      --accelerator-type=*) TPU_ACCELERATOR_TYPE=${1#*=}; shift ;;
      --name) need_value "$1" $#; TPU_NAME=$2; shift 2 ;;
      --name=*) TPU_NAME=${1#*=}; shift ;;
      --dry-run) TPU_DRY_RUN=1; shift ;;
      -h | --help) usage; exit 0 ;;
      --) shift; COMMAND_ARGS=("$@"); break ;;
      *) REST+=("$1"); shift ;;
    esac
  done
}

# require_args project zone name [accelerator-type]: exit 2 naming every missing one.
require_args() {
  local missing=() what
  for what in "$@"; do
    case $what in
      project) [[ -n $TPU_PROJECT ]] || missing+=("--project (or TPU_PROJECT)") ;;
      zone) [[ -n $TPU_ZONE ]] || missing+=("--zone (or TPU_ZONE)") ;;
      name) [[ -n $TPU_NAME ]] || missing+=("--name (or TPU_NAME)") ;;
      accelerator-type) [[ -n $TPU_ACCELERATOR_TYPE ]] || missing+=("--accelerator-type (or TPU_ACCELERATOR_TYPE)") ;;
      *) printf 'internal error: unknown requirement %s\n' "$what" >&2; exit 70 ;;
    esac
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    local text=${missing[0]} i
    for ((i = 1; i < ${#missing[@]}; i++)); do
      text+=", ${missing[i]}"
    done
    usage_error "missing $text"
  fi
}

# unknown_arg ARG: exit 2.
unknown_arg() {
  usage_error "unknown argument: $1"
}

# shell_quote WORD: WORD as the shell would need it (unchanged when it is safe).
shell_quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# join_quoted WORDS...: the words as one shell command line.
join_quoted() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shell_quote "$word")"
  done
  printf '%s' "$out"
}

# run_or_print CMD...: run the command, or print it (prefixed with "+ ") in dry-run mode.
run_or_print() {
  if [[ $TPU_DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(join_quoted "$@")"
  else
    printf '+ %s\n' "$(join_quoted "$@")" >&2
    "$@"
  fi
}

# run_or_print_logged LOGFILE CMD...: like run_or_print, with stdout and stderr also appended to LOGFILE.
run_or_print_logged() {
  local log=$1
  shift
  if [[ $TPU_DRY_RUN == 1 ]]; then
    printf '+ %s 2>&1 | tee -a %s\n' "$(join_quoted "$@")" "$(shell_quote "$log")"
  else
    mkdir -p "$(dirname "$log")"
    printf '+ %s 2>&1 | tee -a %s\n' "$(join_quoted "$@")" "$(shell_quote "$log")" >&2
    "$@" 2>&1 | tee -a "$log"
    return "${PIPESTATUS[0]}"
  fi
}

# tpu_ssh_all REMOTE_COMMAND: run a shell command on every worker, all at once.
tpu_ssh_all() {
  run_or_print "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --project="$TPU_PROJECT" --zone="$TPU_ZONE" \
    --worker=all --command="$1"
}

# tpu_scp_to_all LOCAL REMOTE: copy a local file to every worker (REMOTE relative to home).
tpu_scp_to_all() {
  run_or_print "$GCLOUD" compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" --project="$TPU_PROJECT" \
    --zone="$TPU_ZONE" --worker=all
}

# default_runtime_version ACCELERATOR_TYPE: the TPU software version for JAX on that generation.
default_runtime_version() {
  case $1 in
    v6e*) printf 'v2-alpha-tpuv6e' ;;
    v5p*) printf 'v2-alpha-tpuv5' ;;
    v5litepod* | v5e*) printf 'v2-alpha-tpuv5-lite' ;;
    *) printf 'tpu-ubuntu2204-base' ;;
  esac
}

# common_args: the common flags as given, to pass on to another script (sets COMMON).
common_args() {
  COMMON=(--project "$TPU_PROJECT" --zone "$TPU_ZONE" --name "$TPU_NAME")
  if [[ -n $TPU_ACCELERATOR_TYPE ]]; then
    COMMON+=(--accelerator-type "$TPU_ACCELERATOR_TYPE")
  fi
  if [[ $TPU_DRY_RUN == 1 ]]; then
    COMMON+=(--dry-run)
  fi
}
