#!/usr/bin/env bash
# Launch clipkit-train with torchrun, on one node or many. Hydra overrides pass straight through.
#
#   One node, 8 GPUs:   launch/torchrun.sh --nproc 8 experiment=mine
#   One node, CPU:      launch/torchrun.sh --nproc 2            (gloo; the demo)
#   Two nodes (run on each, same endpoint, node rank 0 and 1):
#     launch/torchrun.sh --nnodes 2 --node-rank 0 --rdzv node0.example:29400 --nproc 8 experiment=mine
#     launch/torchrun.sh --nnodes 2 --node-rank 1 --rdzv node0.example:29400 --nproc 8 experiment=mine
#
# Options (or the environment variables in brackets):
#   --nproc N        processes on this node [NPROC_PER_NODE]; default: GPUs on this node, else 2
#   --nnodes N       number of nodes [NNODES]; default 1
#   --node-rank R    this node's rank [NODE_RANK]; default 0
#   --rdzv HOST:PORT rendezvous endpoint, node 0's address [RDZV_ENDPOINT]; default localhost:29400
#   --run-id ID      shared by all nodes; also names the run folder [CLIPKIT_RUN_ID]; default: a timestamp
# Everything else is given to clipkit-train. The global batch is data.batch_size x processes x
# trainer.accum_steps.
set -euo pipefail

gpus=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
nproc=${NPROC_PER_NODE:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}
nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}
rdzv=${RDZV_ENDPOINT:-localhost:29400}
run_id=${CLIPKIT_RUN_ID:-$(date +%Y-%m-%d_%H-%M-%S)}

overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc) nproc=$2; shift 2 ;;
    --nnodes) nnodes=$2; shift 2 ;;
    --node-rank) node_rank=$2; shift 2 ;;
    --rdzv) rdzv=$2; shift 2 ;;
    --run-id) run_id=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) overrides+=("$1"); shift ;;
  esac
done

export CLIPKIT_RUN_ID=$run_id
# SIGUSR1 too is passed on to the training processes (which save and stop) instead of killing
# torchrun; torchrun gives them 30 s to do so after any of these signals.
exec torchrun --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --nnodes="$nnodes" --node_rank="$node_rank" --nproc_per_node="$nproc" \
  --rdzv_backend=c10d --rdzv_endpoint="$rdzv" --rdzv_id="$run_id" \
  -m clipkit.cli.train "${overrides[@]}"
