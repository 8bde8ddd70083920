#!/usr/bin/env bash
# Create a TPU VM or a pod slice (every worker of a multi-host slice is created at once).
USAGE="usage: tpu_scripts/create.sh --project P --zone Z --accelerator-type A --name N
                            [--version RUNTIME] [--spot | --preemptible] [--dry-run]

Create the TPU VM (or pod slice) N of type A (v4-8, v4-32, v5litepod-16, v6e-8, ...).
--version defaults to the JAX runtime of A's generation: v2-alpha-tpuv6e (v6e),
v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e), tpu-ubuntu2204-base (v4 and older).
--spot / --preemptible: cheaper capacity that can be taken back (runs resume, see README)."
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
version=${TPU_VERSION:-}
capacity=()
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --version) need_value "$1" $#; version=$2; shift 2 ;;
    --version=*) version=${1#*=}; shift ;;
    --spot) capacity=(--spot); shift ;;
    --preemptible) capacity=(--preemptible); shift ;;
    *) unknown_arg "$1" ;;
  esac
done
require_args project zone accelerator-type name
version=${version:-$(default_runtime_version "$TPU_ACCELERATOR_TYPE")}

run_or_print "$GCLOUD" compute tpus tpu-vm create "$TPU_NAME" --project="$TPU_PROJECT" --zone="$TPU_ZONE" \
  --accelerator-type="$TPU_ACCELERATOR_TYPE" --version="$version" "${capacity[@]+"${capacity[@]}"}"
