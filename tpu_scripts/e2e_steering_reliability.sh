#!/usr/bin/env bash
# Steering reliability (Tan et al. 2024), as the paper's code ran it: layer sweep, 37 datasets x 6 vectors x 5 settings,
# full configuration, on a hub model, on a TPU VM or pod slice, end to end.
EXPERIMENT=experiments/steering_reliability/run.py
USAGE="usage: tpu_scripts/e2e_steering_reliability.sh --project P --zone Z --accelerator-type A --name N
                     --model HUB_ID [--data DIR] [--out DIR] [--keep] [--dry-run] [-- ARGS]

Steering reliability (Tan et al. 2024): layer sweep, 37 datasets x 6 vectors x 5 settings, ID/OOD.
Runs, on every worker: python $EXPERIMENT --preset full --model HUB_ID --out DIR [ARGS]
after creating and setting up the TPU VM; copies DIR back and deletes the VM.
"
# shellcheck source=e2e.sh
. "$(dirname "${BASH_SOURCE[0]}")/e2e.sh"
USAGE+=$E2E_OPTIONS
e2e_main "$@"
