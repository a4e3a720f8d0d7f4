#!/usr/bin/env bash
# Trains tessera-imageai-tiny end to end with tessera's own tools, from pictures and captions that
# Debian packages ship (see README.md here and the model card):
#   1. data: 64x64 pictures with captions and categories (make_data.py)
#   2. tokenizer: CLIP's BPE cut to its first merges (make_tokenizer.py)
#   3. train: the text encoder and pixel-space UNet (`tessera train-image`)
#   4. classifier: the category classifier that measures prompt adherence (adherence.py train)
#   5. export: the pipeline folder with f16 weights into OUT
#   6. evaluate: held-out prompts drawn by the exported model, classified by the classifier of real
#      pictures and by one learnt from the model's own drawings of training captions (evaluate.py),
#      and the sample grid
#   7. card: the model card (model_card.py)
#
# FROM=stage starts at that stage and reuses what WORK holds from the earlier ones.
# BUDGET=full (default; about 70 minutes on two cores) or BUDGET=short (a minute or two; what
# scripts/test runs to check that every stage works and the loss falls). WORK holds everything
# made on the way (default /tmp/tessera-image-model); OUT is where the finished model goes
# (default models/tessera-imageai-tiny for the full budget, WORK/model for the short one).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=${TESSERA_BIN:-$ROOT/build/tessera}
PY=${PYTHON:-$ROOT/.venv/bin/python}
BUDGET=${BUDGET:-full}
WORK=${WORK:-/tmp/tessera-image-model}

# Each setting may be overridden from the environment (STEPS=500 LR=1e-3 ... for a trial).
case "$BUDGET" in
  full)  : "${OUT:=$ROOT/models/tessera-imageai-tiny}" "${LIMIT:=}" "${MERGES:=4000}" "${CHANNELS:=16,32,64,128}" \
           "${ATTENTION:=0,0,1,1}" "${NORM_GROUPS:=8}" "${HEAD:=32}" "${TEXT_DIM:=128}" "${STEPS:=3000}" "${BATCH:=8}" \
           "${WARMUP:=200}" "${LR:=5e-4}" "${PREDICTION:=v}" "${EMA:=0.995}" "${EVAL_EVERY:=500}" "${HELDOUT:=10}" \
           "${CLASSIFIER_EPOCHS:=10}" "${PER_CATEGORY:=0}" "${PAIRED:=20}" "${SAMPLE_STEPS:=30}" "${GRID:=1}" ;;
  short) : "${OUT:=$WORK/model}" "${LIMIT:=40}" "${MERGES:=500}" "${CHANNELS:=8,16}" "${ATTENTION:=0,1}" "${NORM_GROUPS:=4}" \
           "${HEAD:=8}" "${TEXT_DIM:=16}" "${STEPS:=40}" "${BATCH:=4}" "${WARMUP:=5}" "${LR:=2e-3}" "${PREDICTION:=v}" "${EMA:=0.9}" \
           "${EVAL_EVERY:=20}" "${HELDOUT:=1}" "${CLASSIFIER_EPOCHS:=1}" "${PER_CATEGORY:=1}" "${PAIRED:=2}" "${SAMPLE_STEPS:=3}" \
           "${GRID:=0}" ;;
  *) echo "train.sh: BUDGET must be full or short, got '$BUDGET'" >&2; exit 2 ;;
esac

FROM=${FROM:-data}
STAGES=(data tokenizer train classifier export evaluate card)
source "$HERE/../stages.sh"

if runs data; then
say "data"
rm -rf "$WORK/data"
"$PY" "$HERE/make_data.py" -o "$WORK/data" --size 64 --seed 7 --jobs 2 ${LIMIT:+--limit "$LIMIT"}
took data
fi

if runs tokenizer; then
say "tokenizer (CLIP's first $MERGES merges)"
"$PY" "$HERE/make_tokenizer.py" -o "$WORK/tokenizer" --merges "$MERGES"
took tokenizer
fi

if runs train; then
say "training ($STEPS steps of $BATCH pictures)"
rm -rf "$WORK/trained"
"$B" train-image --data "$WORK/data" --tokenizer "$WORK/tokenizer" -o "$WORK/trained" --channels "$CHANNELS" \
  --attention "$ATTENTION" --norm-groups "$NORM_GROUPS" --head-channels "$HEAD" --text-dim "$TEXT_DIM" --steps "$STEPS" \
  --batch "$BATCH" --warmup "$WARMUP" --lr "$LR" --prediction "$PREDICTION" --ema-decay "$EMA" --eval-every "$EVAL_EVERY" \
  --heldout-per-category "$HELDOUT" --log-every $((STEPS / 72 > 5 ? STEPS / 72 : 5)) --seed 7
took train
fi

if runs classifier; then
say "adherence classifier"
"$PY" "$HERE/adherence.py" train --data "$WORK/data" --out "$WORK/classifier.pt" --epochs "$CLASSIFIER_EPOCHS"
took classifier
fi

if runs export; then
say "export to $OUT (f16 weights)"
rm -rf "$OUT.tmp" && cp -r "$WORK/trained" "$OUT.tmp"
"$PY" - "$OUT.tmp" <<'PY'
import sys, pathlib
from safetensors.torch import load_file, save_file
for f in pathlib.Path(sys.argv[1]).glob("*/*.safetensors"):
    save_file({k: v.half().contiguous() for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
PY
install -m 644 "$WORK/data/stats.json" "$OUT.tmp/data_stats.json"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
took export
fi

if runs evaluate; then
say "evaluation"
"$PY" "$HERE/evaluate.py" --tessera "$B" --model "$OUT" --classifier "$WORK/classifier.pt" --out "$WORK/eval" \
  --steps "$SAMPLE_STEPS" --per-category "$PER_CATEGORY" --data "$WORK/data" --paired "$PAIRED" $([ "$GRID" = 1 ] && echo --grid "$OUT/samples.png")
cp "$WORK/eval/eval.json" "$OUT/eval.json"
took evaluate
fi

if runs card; then
say "model card"
"$PY" "$HERE/model_card.py" --work "$WORK" --out "$OUT"
fi
say "done"
