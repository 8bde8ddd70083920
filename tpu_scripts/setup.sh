#!/usr/bin/env bash
# Install steerjax and its dependencies on every worker of a TPU VM or pod slice.
USAGE="usage: tpu_scripts/setup.sh --project P --zone Z --name N [--accelerator-type A]
                           [--repo-url URL [--ref REF]] [--data DIR] [--libtpu-index URL]
                           [--python PYTHON] [--dry-run]

On every worker (all at once): a virtual environment ~/steerjax-venv with jax[tpu] and steerjax
(installed editable from ~/steerjax), both constrained to the versions CI tested
(constraints/tested.txt), then a check that JAX sees the TPU.

Where the code comes from:
  default          this checkout's files (git ls-files: tracked and untracked-but-not-ignored,
                   uncommitted edits included; outside git: all but .git, .venv, runs, results),
                   packed into a tarball and copied to every worker
  --repo-url URL   workers git clone URL (at --ref REF, default: the default branch) instead
--data DIR         copy a local data directory (anthropic-evals/, prompt-steering/, steering-bench/)
                   to ~/steerjax-data on every worker (default: \$STEERJAX_DATA if set; launch.sh
                   points STEERJAX_DATA there)
--libtpu-index URL a pip --find-links page for libtpu wheels, for jax versions that need one
                   (default: \$STEERJAX_LIBTPU_INDEX; none: plain pip install jax[tpu])
--python PYTHON    the workers' interpreter used to create the venv (default: python3)"
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
repo_url=""
ref=""
data=${STEERJAX_DATA:-}
libtpu_index=${STEERJAX_LIBTPU_INDEX:-}
python=python3
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --repo-url) need_value "$1" $#; repo_url=$2; shift 2 ;;
    --repo-url=*) repo_url=${1#*=}; shift ;;
    --ref) need_value "$1" $#; ref=$2; shift 2 ;;
    --ref=*) ref=${1#*=}; shift ;;
    --data) need_value "$1" $#; data=$2; shift 2 ;;
    --data=*) data=${1#*=}; shift ;;
    --libtpu-index) need_value "$1" $#; libtpu_index=$2; shift 2 ;;
    --libtpu-index=*) libtpu_index=${1#*=}; shift ;;
    --python) need_value "$1" $#; python=$2; shift 2 ;;
    --python=*) python=${1#*=}; shift ;;
    *) unknown_arg "$1" ;;
  esac
done
require_args project zone name
if [[ -n $ref && -z $repo_url ]]; then
  usage_error "--ref needs --repo-url"
fi
if [[ -n $data && $TPU_DRY_RUN != 1 && ! -d $data ]]; then
  usage_error "--data $data is not a directory"
fi

stage=${TMPDIR:-/tmp}/steerjax-tpu-$TPU_NAME
src_tar=$stage/steerjax-src.tar.gz
data_tar=$stage/steerjax-data.tar.gz

# 1. the code: replaces everything in ~/steerjax but runs/ (run directories survive a new setup)
clean="mkdir -p ~/$REMOTE_REPO && find ~/$REMOTE_REPO -mindepth 1 -maxdepth 1 ! -name runs -exec rm -rf {} +"
if [[ -z $repo_url ]]; then
  run_or_print mkdir -p "$stage"
  q_root=$(shell_quote "$REPO_ROOT")
  q_tar=$(shell_quote "$src_tar")
  if git -C "$REPO_ROOT" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    if [[ $TPU_DRY_RUN == 1 ]]; then
      printf '+ git -C %s ls-files -z --cached --others --exclude-standard | tar -C %s --null --ignore-failed-read -T - -czf %s\n' \
        "$q_root" "$q_root" "$q_tar"
    else
      git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard \
        | tar -C "$REPO_ROOT" --null --ignore-failed-read -T - -czf "$src_tar"
    fi
  else  # not a git checkout (an unpacked sdist, a copy): everything but local outputs
    run_or_print tar -C "$REPO_ROOT" --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./results \
      --exclude=./tpu-logs --exclude=__pycache__ -czf "$src_tar" .
  fi
  tpu_scp_to_all "$src_tar" steerjax-src.tar.gz
  get_code="$clean && tar -xzf ~/steerjax-src.tar.gz -C ~/$REMOTE_REPO"
else
  branch=""
  if [[ -n $ref ]]; then
    branch=" --branch $(shell_quote "$ref")"
  fi
  get_code="$clean && rm -rf ~/steerjax-clone && git clone --depth 1$branch $(shell_quote "$repo_url") ~/steerjax-clone"
  get_code+=" && cp -a ~/steerjax-clone/. ~/$REMOTE_REPO/ && rm -rf ~/steerjax-clone"
fi

# 2. the data
get_data=""
if [[ -n $data ]]; then
  if [[ $TPU_DRY_RUN == 1 ]]; then
    printf '+ tar -C %s -czf %s .\n' "$(shell_quote "$data")" "$(shell_quote "$data_tar")"
  else
    mkdir -p "$stage"
    tar -C "$data" -czf "$data_tar" .
  fi
  tpu_scp_to_all "$data_tar" steerjax-data.tar.gz
  get_data=" && rm -rf ~/$REMOTE_DATA && mkdir -p ~/$REMOTE_DATA && tar -xzf ~/steerjax-data.tar.gz -C ~/$REMOTE_DATA"
fi

# 3. the environment, on every worker at once
find_links=""
if [[ -n $libtpu_index ]]; then
  find_links=" -f $(shell_quote "$libtpu_index")"
fi
venv="\$HOME/$REMOTE_VENV"
install="set -o pipefail; $get_code$get_data && mkdir -p ~/$REMOTE_LOGS"
install+=" && { $(shell_quote "$python") -m venv $venv || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && $(shell_quote "$python") -m venv $venv; }; }"
install+=" && . $venv/bin/activate && python -m pip install -q --upgrade pip"
# the versions CI tested (constraints/tested.txt), not whatever is newest
constraints="-c ~/$REMOTE_REPO/constraints/tested.txt"
install+=" && python -m pip install -q 'jax[tpu]'$find_links $constraints"
install+=" && python -m pip install -q -e ~/$REMOTE_REPO $constraints"
install+=" && python -c 'import jax, steerjax; print(jax.process_index(), jax.local_device_count(), jax.device_count(), steerjax.__version__)'"
tpu_ssh_all "$install"
