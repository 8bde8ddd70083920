#!/usr/bin/env bash
# Steerability predictor (Fan et al.): testbed rollouts, features, predictor, guided strength search,
# full configuration, on a hub model, on a TPU VM or pod slice, end to end.
EXPERIMENT=experiments/steerability_predictor/run.py
USAGE="usage: tpu_scripts/e2e_steerability_predictor.sh --project P --zone Z --accelerator-type A --name N
                     --model HUB_ID [--data DIR] [--out DIR] [--keep] [--dry-run] [-- ARGS]

Steerability predictor (Fan et al.): testbed rollouts, features, predictor, guided strength search.
Runs, on every worker: python $EXPERIMENT --preset full --model HUB_ID --out DIR [ARGS]
after creating and setting up the TPU VM; copies DIR back and deletes the VM.
"
# shellcheck source=e2e.sh
. "$(dirname "${BASH_SOURCE[0]}")/e2e.sh"
USAGE+=$E2E_OPTIONS
e2e_main "$@"
