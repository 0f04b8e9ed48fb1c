#!/usr/bin/env bash
# Train or protect on every GPU of one machine with torchrun (DDP; DeepSpeed ZeRO with DEEPSPEED_CONFIG).
#
#   bash launch/torchrun_single_node.sh train   --recipe cifar10_resnet18 --set data.root=~/data/cifar-10-python.tar.gz
#   bash launch/torchrun_single_node.sh protect --method em --dataset cifar10 --root ~/data
#   DEEPSPEED_CONFIG=launch/deepspeed/zero2.json bash launch/torchrun_single_node.sh train --recipe ...
#   bash launch/torchrun_single_node.sh --dry-run train ...      # (or DRY_RUN=1) print the command, run nothing
#
# Environment: NPROC (processes; default: the GPUs nvidia-smi lists, 1 without GPUs), DEEPSPEED_CONFIG
# (train only: a launch/deepspeed/*.json), PYTHON (default python3), OMP_NUM_THREADS (default: cores / NPROC).
# Everything after the subcommand goes to `python -m ueperf.train` / `ueperf.protect` unchanged.
set -euo pipefail

DRY_RUN=${DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
WHAT=${1:-}
case "$WHAT" in
    train|protect) shift ;;
    *) echo "usage: $0 [--dry-run] {train|protect} [ueperf arguments...]" >&2; exit 2 ;;
esac
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi

PYTHON=${PYTHON:-python3}
if [ -z "${NPROC:-}" ]; then
    NPROC=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    [ "${NPROC:-0}" -ge 1 ] 2>/dev/null || NPROC=1
fi
CORES=$(nproc 2>/dev/null || echo 1)
THREADS=${OMP_NUM_THREADS:-$(( CORES / NPROC > 0 ? CORES / NPROC : 1 ))}

EXTRA=()
if [ -n "${DEEPSPEED_CONFIG:-}" ]; then
    if [ "$WHAT" != "train" ]; then echo "$0: DEEPSPEED_CONFIG applies to train only" >&2; exit 2; fi
    # the engine builds its DeepSpeed config from the ueperf config: the file becomes --set values
    DS_ARGS=$("$PYTHON" -m ueperf.launch deepspeed-sets "$DEEPSPEED_CONFIG")
    mapfile -t EXTRA <<< "$DS_ARGS"
fi

CMD=(env OMP_NUM_THREADS="$THREADS" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC"
     -m "ueperf.$WHAT" "$@" "${EXTRA[@]}")
if [ "$DRY_RUN" = "1" ]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
exec "${CMD[@]}"
