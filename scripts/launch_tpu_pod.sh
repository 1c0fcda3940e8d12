#!/usr/bin/env bash
# Runs resjax's training on a Cloud TPU VM pod slice: creates the slice, copies this checkout
# to every worker, installs it, and starts the same train command on all workers at once
# with --distributed (jax.distributed finds the other workers by itself on a TPU VM).
#
#   scripts/launch_tpu_pod.sh [--dry-run] [--name=resjax-pod] [--zone=us-central2-b] \
#       [--accelerator=v4-32] [--version=tpu-ubuntu2204-base] [--project=P] [--skip-create] \
#       -- --config=configs/cifar10_resnet20.py --workdir=/mnt/runs/r20 [--config.x=y ...]
#
# --dry-run (or DRY_RUN=1) prints every command, exactly as it would run, and runs nothing.
# The workdir must be a directory every worker sees (NFS/Filestore or a gcsfuse mount; gs://
# paths are not supported yet): all workers save and restore checkpoints there, only worker 0
# writes metrics. Re-running with --skip-create resumes from the latest checkpoint.
set -euo pipefail

name=resjax-pod
zone=us-central2-b
accelerator=v4-32
version=tpu-ubuntu2204-base
project=''
create=1
dry_run=${DRY_RUN:-0}
train_args=()

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --skip-create) create=0 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) echo "error: unknown argument $1 (train.py flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
if ((${#train_args[@]} == 0)); then
  echo 'error: give the train.py flags after --, e.g. -- --config=configs/x.py --workdir=/mnt/r' >&2
  exit 2
fi

# Shell-quotes one word only when needed, so printed commands can be pasted as they are.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run() {
  local words=() w
  for w in "$@"; do words+=("$(quote "$w")"); done
  echo "${words[*]}"
  if [[ $dry_run != 1 ]]; then "$@"; fi
}

tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[[ -n $project ]] && where+=("--project=$project")
archive=/tmp/resjax-$name.tar.gz

train_words=()
for w in "${train_args[@]}"; do train_words+=("$(quote "$w")"); done
install='mkdir -p ~/resjax && tar -xzf ~/resjax.tar.gz -C ~/resjax && cd ~/resjax'
install+=' && pip install -q -U "jax[tpu]" && pip install -q -e ".[tfds]"'
train="cd ~/resjax && python3 scripts/train.py --distributed ${train_words[*]}"

cd "$(dirname "$0")/.."
if ((create)); then
  run "${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accelerator" \
    "--version=$version"
fi
run git archive --format=tar.gz -o "$archive" HEAD
run "${tpu[@]}" scp "$archive" "$name:resjax.tar.gz" "${where[@]}" --worker=all
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$install"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$train"
