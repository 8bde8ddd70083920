#!/usr/bin/env bash
# Delete a TPU VM or pod slice (no confirmation prompt).
USAGE="usage: tpu_scripts/delete.sh --project P --zone Z --name N [--accelerator-type A] [--dry-run]

Delete the TPU VM (or pod slice) N, without asking. Copy results back first (copy_back.sh)."
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
if [[ ${#REST[@]} -gt 0 ]]; then
  unknown_arg "${REST[0]}"
fi
require_args project zone name

run_or_print "$GCLOUD" compute tpus tpu-vm delete "$TPU_NAME" --project="$TPU_PROJECT" --zone="$TPU_ZONE" --quiet
