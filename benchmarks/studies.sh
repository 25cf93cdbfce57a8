#!/usr/bin/env bash
# The quality studies of docs/benchmarks/, each one `lightning-mix compare` command.
#
#   bash benchmarks/studies.sh STUDY [SEED ...]
#
# STUDY is one of: mixing (SmallCNN on clean MNIST5k), mixing-noise30 (the same with 30% of the
# training labels flipped), rank-mixup (RankMixup's MRL and M-NDCG against ERM; its runs go to the
# mixing study's folder, whose ERM runs are the same job and so are not run twice),
# averaging-calibration and averaging-calibration-noise30 (weight averaging, temperature scaling
# and model-level mixing on SmallCNN), calibration-losses (SmallCNN
# trained with each calibration loss of lightning_mix.losses), merging and merging-subsets (the
# merges of benchmarks/merging_study.py, one run of the script per seed, then compare --stored),
# vit (TinyViT on MNIST5k). Seeds default to 0 1 2 3 4. Results go to
# benchmarks/studies/ (results.md, results.csv, plots, each run's test predictions); git tracks the
# predictions (METHOD/seed=SEED/predictions.pt, about 50 kB each) and nothing else there, so the
# runs behind a docs table travel with the repository and `--stored` redoes the table. compare resumes: a finished
# (method, seed) run is not run again, so running the script with more seeds, or again after an
# interruption, only runs what is missing. The SmallCNN studies train every run for $EPOCHS epochs
# (default 30) and write to benchmarks/studies/STUDY-${EPOCHS}ep/, so runs of different lengths never mix
# (EPOCHS=10 bash benchmarks/studies.sh mixing); the ViT study trains for the 30 epochs of
# examples/mnist5k_vit.yaml. The table is computed from the stored test predictions. Seeds given
# one at a time (`... vit 0`, then `... vit 0 1`, ...) fill the table seed by seed for every method.
# Options after the seeds go to compare (e.g. `... mixing 0 1 2 3 4 --no-plots`; `--stored` re-reads
# the stored runs and trains nothing, an error if one is missing).
set -euo pipefail

study=${1:?usage: bash benchmarks/studies.sh STUDY [SEED ...] [COMPARE OPTIONS ...]}
shift
seeds=()
while [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; do seeds+=("$1"); shift; done
extra=("$@")
epochs=${EPOCHS:-30}
if [ ${#seeds[@]} -eq 0 ]; then seeds=(0 1 2 3 4); fi
if [ ${#extra[@]} -eq 0 ]; then extra=(--progress auto); fi  # the default, spelled out: bash < 4.4 refuses empty arrays under set -u

base=examples/mnist5k.yaml
# ERM, the batch mixers, the saliency- and transport-guided mixers (issue 15) and the learned
# mixers (issue 16), all on SmallCNN with the base recipe of examples/mnist5k.yaml.
mixing_methods=(
  --method "erm=$base"
  --method "mixup=$base,callbacks/mixup.yaml"
  --method "cutmix=$base,callbacks/cutmix.yaml"
  --method "saliencymix=$base,callbacks/saliencymix.yaml"
  --method "puzzlemix=$base,callbacks/puzzlemix.yaml"
  --method "comixup=$base,callbacks/comixup.yaml"
  --method "alignmixup=$base,callbacks/alignmixup.yaml"
  --method "sumix=examples/mnist5k_sumix.yaml"
  --method "automix=examples/mnist5k_automix.yaml"
  --method "samix=examples/mnist5k_samix.yaml"
  --method "adautomix=examples/mnist5k_adautomix.yaml"
  --method "adamixup=examples/mnist5k_adamixup.yaml"
)
# RankMixup (a mixin: the demo model RankMixupSmallCNN) with each of its two losses, against ERM.
rank_mixup_methods=(
  --method "erm=$base"
  --method "rankmixup_mrl=examples/mnist5k_rankmixup.yaml"
  --method "rankmixup_mndcg=examples/mnist5k_rankmixup.yaml,examples/rankmixup_mndcg.yaml"
)
# Weight averaging (EMA, SWA, model soups), temperature scaling (alone and after Mixup) and the
# model-level mixers that are callbacks (Manifold Mixup, RegMixup), each at its preset's defaults.
averaging_calibration_methods=(
  --method "erm=$base"
  --method "ema=$base,callbacks/ema.yaml"
  --method "swa=$base,callbacks/swa.yaml"
  --method "soup=$base,callbacks/soup.yaml"
  --method "temperature_scaling=$base,callbacks/temperature_scaling.yaml"
  --method "mixup_ts=$base,callbacks/mixup.yaml,callbacks/temperature_scaling.yaml"
  --method "manifold_mixup=$base,callbacks/manifold_mixup.yaml"
  --method "regmixup=$base,callbacks/regmixup.yaml"
)
# Each calibration loss of lightning_mix.losses at its defaults (the authors'), as SmallCNN's training loss.
losses=examples/calibration_losses
calibration_loss_methods=(--method "erm=$base")
for loss in label_smoothing focal flsd53 mbls mdca dca mmce brier; do
  calibration_loss_methods+=(--method "$loss=$base,$losses/$loss.yaml")
done
# The merged models of benchmarks/merging_study.py against the uniform soup, then the references
# (the base, each fine-tuned model on its own task, the jointly fine-tuned model).
merging_methods=(uniform_soup task_arithmetic task_arithmetic_no_bn ties dare_task_arithmetic dare_ties
  model_stock pcb consensus fisher regmean adamerging base finetuned_own_task joint)
vit=examples/mnist5k_vit.yaml
vit_methods=(
  --method "erm=$vit"
  --method "mixup=$vit,callbacks/mixup.yaml"
  --method "cutmix=$vit,callbacks/cutmix.yaml"
  --method "mixup_or_cutmix=$vit,callbacks/mixup-or-cutmix.yaml"
  --method "transmix=$vit,callbacks/transmix.yaml"
  --method "tl_align=$vit,callbacks/tl_align.yaml"
  --method "smmix=$vit,examples/mnist5k_smmix_vit.yaml"
)
common=(--trainer.logger false --trainer.enable_checkpointing false)

# compare_smallcnn OUTPUT_NAME METHOD_ARRAY_NAME [EXTRA FIT ARGUMENTS...]
compare_smallcnn() {
  local output=$1 methods_name=$2
  shift 2
  local -n methods=$methods_name
  lightning-mix compare "${methods[@]}" --seeds "${seeds[@]}" --output "benchmarks/studies/${output}-${epochs}ep" "${extra[@]}" \
    -- --trainer.max_epochs "$epochs" "$@" "${common[@]}"
}
noise=(--data.init_args.label_noise 0.3)

# merging_study OUTPUT_NAME [SCRIPT ARGUMENTS...]: one script run per seed not stored yet, then the report.
merging_study() {
  local output=benchmarks/studies/$1
  shift
  for seed in "${seeds[@]}"; do
    if [ ! -f "$output/adamerging/seed=$seed/predictions.pt" ]; then  # the last model the script stores
      python benchmarks/merging_study.py --seed "$seed" --skip-barrier --predictions "$output" "$@"
    fi
  done
  local methods=()
  for m in "${merging_methods[@]}"; do methods+=(--method "$m"); done
  lightning-mix compare --stored "${methods[@]}" --seeds "${seeds[@]}" --output "$output" "${extra[@]}"
}

case "$study" in
  mixing) compare_smallcnn mixing mixing_methods ;;
  mixing-noise30) compare_smallcnn mixing-noise30 mixing_methods "${noise[@]}" ;;
  rank-mixup) compare_smallcnn mixing rank_mixup_methods ;;
  averaging-calibration) compare_smallcnn averaging-calibration averaging_calibration_methods ;;
  averaging-calibration-noise30)
    compare_smallcnn averaging-calibration-noise30 averaging_calibration_methods "${noise[@]}" ;;
  calibration-losses) compare_smallcnn calibration-losses calibration_loss_methods ;;
  merging) merging_study merging ;;
  merging-subsets) merging_study merging-subsets --scenario subsets --base-steps 60 ;;
  vit)
    lightning-mix compare "${vit_methods[@]}" --seeds "${seeds[@]}" --output benchmarks/studies/vit "${extra[@]}" \
      -- "${common[@]}" ;;
  *)
    echo "unknown study '$study': choose mixing, mixing-noise30, rank-mixup, averaging-calibration," \
      "averaging-calibration-noise30, calibration-losses, merging, merging-subsets or vit" >&2
    exit 2 ;;
esac
