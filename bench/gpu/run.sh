#!/usr/bin/env bash
# Every GPU figure of ueperf in one call (issue 17): bench/gpu/run.py with the checkout on the path.
#   bash bench/gpu/run.sh              # one GPU, full sizes, 8-minute budget; report in $OUT or bench/results/
#   bash bench/gpu/run.sh --smoke      # every step at tiny sizes on the CPU
# Options are run.py's (python3 bench/gpu/run.py --help).
set -u
cd "$(dirname "$0")/../.."
export UEPERF_GPU_SUITE_ENTRY="bash bench/gpu/run.sh${*:+ $*}"
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" exec python3 bench/gpu/run.py "$@"
