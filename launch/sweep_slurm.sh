#!/usr/bin/env bash
# A protections × countermeasures × paradigms × seeds sweep on a SLURM cluster (python -m ueperf.sweep
# --launcher slurm, through submitit). Run it on a login node: it checks every cell's config, submits
# one prepare job (clean store, prior), an array of protection jobs after it, and per protection × seed
# an array of its cells after that protection, then returns. Rerun the same command to collect the
# finished cells (tables in $OUT) and resubmit the failed ones; cells still queued or running are left alone.
#
#   ROOT=/data/imagenet-mini PARTITION=gpu bash launch/sweep_slurm.sh
#   bash launch/sweep_slurm.sh --dry-run                 # (or DRY_RUN=1) print the command, run nothing
#   bash launch/sweep_slurm.sh --slurm-wait              # extra arguments go to ueperf.sweep
#   $(bash launch/sweep_slurm.sh --dry-run) --dry-run    # the sweep's own dry run: every cell checked, the job plan
#
# The defaults are the 1,440-cell ImageNet-mini sweep: 10 rows × 8 countermeasures × 6 paradigms × 3 seeds
# (ImageFolder at ROOT, the ImageNet-stem recipe tinyimagenet100_resnet18: 100 epochs, wd 5e-5).
# Needs: pip install 'ueperf[slurm]'; ROOT and data.cache_dir (CACHE) on a shared file system.
set -euo pipefail

DRY_RUN=${DRY_RUN:-0}
ARGS=()
for a in "$@"; do
    if [ "$a" = "--dry-run" ]; then DRY_RUN=1; else ARGS+=("$a"); fi
done

PYTHON=${PYTHON:-python3}
DATASET=${DATASET:-imagefolder}
ROOT=${ROOT:-$HOME/data/imagenet-mini}
RECIPE=${RECIPE:-tinyimagenet100_resnet18}
PROTECTIONS=${PROTECTIONS:-clean,random,em,rem,sp,ops,ap,aep,hypo,bait}
COUNTERMEASURES=${COUNTERMEASURES:-nt,nt_cg,st,st_cg,st_full,at,ueraser,iss_jpeg}
PARADIGMS=${PARADIGMS:-fs,lp,pf1,pf2,pf3,ft}
SEEDS=${SEEDS:-0,1,2}
PRIOR=${PRIOR:-tinyimagenet100_resnet18}   # a state dict (prior.pt), or a recipe built once by the prepare job
OUT=${OUT:-sweeps/imagenet-mini}
CACHE=${CACHE:-$HOME/.cache/ueperf}
PARTITION=${PARTITION:-gpu}
TIME=${TIME:-12:00:00}
GPUS_PER_CELL=${GPUS_PER_CELL:-1}
CPUS_PER_TASK=${CPUS_PER_TASK:-8}
ARRAY_PARALLELISM=${ARRAY_PARALLELISM:-64}

CMD=("$PYTHON" -m ueperf.sweep --launcher slurm
     --dataset "$DATASET" --root "$ROOT" --recipe "$RECIPE"
     --protections "$PROTECTIONS" --countermeasures "$COUNTERMEASURES" --paradigms "$PARADIGMS" --seeds "$SEEDS"
     --prior "$PRIOR" --set "data.cache_dir=$CACHE" --out "$OUT" --quiet
     --gpus-per-cell "$GPUS_PER_CELL" --slurm-partition "$PARTITION" --slurm-time "$TIME"
     --slurm-cpus-per-task "$CPUS_PER_TASK" --slurm-array-parallelism "$ARRAY_PARALLELISM"
     "${ARGS[@]}")
if [ "$DRY_RUN" = "1" ]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
exec "${CMD[@]}"
