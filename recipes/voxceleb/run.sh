#!/usr/bin/env bash
# VoxCeleb recipe, in numbered stages (wespeaker-style --stage / --stop-stage). Run from the repository root:
#
#   bash recipes/voxceleb/run.sh --source /corpora/voxceleb --musan /corpora/musan --rirs /corpora/RIRS_NOISES
#   bash recipes/voxceleb/run.sh --stage 2 --stop-stage 2 --gpus 8        # one stage alone (SSL training, 8 GPUs)
#   bash recipes/voxceleb/run.sh --demo                                    # every stage on the demo corpus, CPU
#
# Stages (each one can be rerun alone; training stages resume from their checkpoints):
#   0  prepare      sslsv prepare voxceleb|musan|rirs (--demo: sslsv demo-corpus)
#   1  shards       sslsv shards: the training manifest as tar shards (DATA/<corpus>/shards/shard.list)
#   2  ssl          self-supervised training from the shards (torchrun when --gpus > 1); the run directory's
#                   config.yml is reused when it exists, so a rerun resumes the same run
#   3  average      sslsv average: model_avg.pt from the last --average-epochs epochs
#   4  evaluate     sslsv evaluate on Vox1-O/E/H (--demo: the demo trials), plain cosine and AS-norm
#   5  pseudo       sslsv multistage: rounds of k-means + AHC pseudo-labels and supervised training
#                   (conf/multistage.yml), starting from the stage-2 run
#   6  lmft         large-margin fine-tuning: the supervised config (AAM-softmax) on the last round's pseudo-labels,
#                   encoder from the last round, margin 0.5, 6-s crops, 10 epochs at lr 1e-4 (sslsv has no dedicated
#                   LMFT method: this stage is `sslsv train` with those overrides), then evaluation as in stage 4
#   7  export       sslsv export: the LMFT model to ONNX
#
# Multi-node and Slurm launches: docs/scaling.md and recipes/slurm/train.sbatch.
set -euo pipefail

stage=0
stop_stage=7
demo=false
data=data
exp=
source_dir=
musan_dir=
rirs_dir=
gpus=1
workers=8
ssl_config=
sup_config=
utts_per_shard=1000
average_epochs=10
extra=()

usage() {
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --stage N            first stage to run (default 0)
  --stop-stage N       last stage to run (default 7)
  --demo               the demo corpus and CPU-sized runs (a few minutes end to end)
  --data DIR           data root (default data)
  --exp DIR            experiment folder (default exp/voxceleb, exp/voxceleb_demo with --demo)
  --source DIR         downloaded VoxCeleb archives or folders (stage 0)
  --musan DIR          extracted musan/ folder (stage 0, optional)
  --rirs DIR           extracted RIRS_NOISES/ folder (stage 0, optional)
  --gpus N             GPUs of this node for training (torchrun when N > 1; default 1)
  --workers N          parallel workers of stages 0-1 (default 8)
  --ssl-config FILE    SSL train config (default configs/dino/fast_resnet34.yml)
  --sup-config FILE    supervised config of the LMFT stage (default configs/supervised/fast_resnet34.yml)
  --utts-per-shard N   utterances per tar shard (default 1000)
  --average-epochs N   epochs averaged in stage 3 (default 10)
  --override KEY=VALUE extra config override of the training stages (repeatable)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --demo) demo=true; shift ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --source) source_dir=$2; shift 2 ;;
    --musan) musan_dir=$2; shift 2 ;;
    --rirs) rirs_dir=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --ssl-config) ssl_config=$2; shift 2 ;;
    --sup-config) sup_config=$2; shift 2 ;;
    --utts-per-shard) utts_per_shard=$2; shift 2 ;;
    --average-epochs) average_epochs=$2; shift 2 ;;
    --override) extra+=("$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The sslsv command: the installed entry point, else the package of this checkout.
if [ -n "${SSLSV:-}" ]; then read -r -a sslsv <<< "$SSLSV"
elif command -v sslsv > /dev/null; then sslsv=(sslsv)
else sslsv=("${PYTHON:-python}" -m sslsv)
fi

if $demo; then
  exp=${exp:-exp/voxceleb_demo}
  corpus=demo
  manifest=demo/train.csv
  trials=(demo)
  ssl_config=${ssl_config:-configs/simclr/fast_resnet34_demo.yml}
  sup_config=${sup_config:-configs/supervised/fast_resnet34_demo.yml}
  multistage_config=recipes/voxceleb/conf/multistage_demo.yml
  utts_per_shard=100
  average_epochs=2
  # CPU seconds per stage: a small encoder (the same in every stage), 2 epochs of 2 steps.
  model=(encoder.base_width=8 encoder.embed_dim=64)
  short=(dataset.batch_size=16 dataset.num_workers=0 trainer.epochs=2 trainer.max_steps_per_epoch=2
         trainer.validate_every=0 trainer.average_last=2 trainer.progress_bar=false)
  lmft_crop=3.0
  eval_options=(--cohort-size 100)
else
  exp=${exp:-exp/voxceleb}
  corpus=voxceleb2
  manifest=voxceleb2/train.csv
  trials=(vox1_O vox1_E vox1_H)
  ssl_config=${ssl_config:-configs/dino/fast_resnet34.yml}
  sup_config=${sup_config:-configs/supervised/fast_resnet34.yml}
  multistage_config=recipes/voxceleb/conf/multistage.yml
  model=()
  short=()
  lmft_crop=6.0
  eval_options=()
fi
shards=$corpus/shards/shard.list
ssl_run=$exp/ssl
lmft_run=$exp/lmft

run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
say() { echo "== stage $1: $2 ($(date '+%H:%M:%S'))"; }

# train RUN_DIR CONFIG OVERRIDES...: the run's own config.yml when it exists (a rerun resumes the same run).
train() {
  local run=$1 config=$2
  shift 2
  [ -f "$run/config.yml" ] && config=$run/config.yml
  if [ "$gpus" -gt 1 ]; then
    torchrun --standalone --nproc_per_node="$gpus" -m sslsv train "$config" run_dir="$run" "$@"
  else
    "${sslsv[@]}" train "$config" run_dir="$run" "$@"
  fi
}

if run_stage 0; then
  say 0 prepare
  if $demo; then
    [ -f "$data/demo/train.csv" ] || "${sslsv[@]}" demo-corpus --output "$data/demo" --quiet
  else
    [ -n "$source_dir" ] || { echo "run.sh: stage 0 needs --source (the downloaded VoxCeleb)" >&2; exit 2; }
    "${sslsv[@]}" prepare voxceleb "$source_dir" --data-root "$data" --workers "$workers"
    [ -z "$musan_dir" ] || "${sslsv[@]}" prepare musan "$musan_dir" --data-root "$data" --workers "$workers"
    [ -z "$rirs_dir" ] || "${sslsv[@]}" prepare rirs "$rirs_dir" --data-root "$data"
  fi
fi

if run_stage 1; then
  say 1 shards
  "${sslsv[@]}" shards "$data/$manifest" --data-root "$data" -o "$data/$corpus/shards" \
    --utts-per-shard "$utts_per_shard" --workers "$workers"
fi

if run_stage 2; then
  say 2 "SSL training"
  train "$ssl_run" "$ssl_config" dataset.data_root="$data" dataset.manifest="$manifest" dataset.shards="$shards" \
    "${model[@]}" "${short[@]}" "${extra[@]}"
fi

if run_stage 3; then
  say 3 averaging
  "${sslsv[@]}" average "$ssl_run" --epochs "$average_epochs"
fi

if run_stage 4; then
  say 4 evaluation
  "${sslsv[@]}" evaluate "$ssl_run" --trials "${trials[@]}" --norm none asnorm "${eval_options[@]}" --force
fi

if run_stage 5; then
  say 5 "pseudo-label rounds"
  "${sslsv[@]}" multistage "$multistage_config" workdir="$exp/multistage" ssl.run_dir="$ssl_run" \
    data_root="$data" manifest="$manifest"
fi

if run_stage 6; then
  say 6 "large-margin fine-tuning"
  last=$(ls -d "$exp"/multistage/round_[0-9]* 2> /dev/null | sort | tail -n 1 || true)
  [ -f "$last/train.csv" ] || { echo "run.sh: stage 6 needs stage 5's pseudo-labels ($last/train.csv)" >&2; exit 2; }
  train "$lmft_run" "$sup_config" dataset.data_root="$data" dataset.manifest="$(cd "$last" && pwd)/train.csv" \
    trainer.init_weights="$last/run" method.margin=0.5 "dataset.views=[{count: 1, seconds: $lmft_crop}]" \
    trainer.lr=0.0001 trainer.epochs=10 "${model[@]}" "${short[@]}" "${extra[@]}"
  "${sslsv[@]}" evaluate "$lmft_run" --trials "${trials[@]}" --norm none asnorm "${eval_options[@]}" --force
fi

if run_stage 7; then
  say 7 export
  "${sslsv[@]}" export "$lmft_run" -o "$exp/export/model.onnx" --normalize
fi
