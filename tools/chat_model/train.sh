#!/usr/bin/env bash
# Trains tessera-dbrx-tiny-instruct end to end with tessera's own tools, from text that Debian
# packages ship (see make_data.py and the model card):
#   1. the data: a dictionary corpus from WordNet plus fortunes, and a chat set about the words
#   2. a byte-level BPE vocabulary of 8192 tokens on the corpus (`tessera tokenizer train`)
#   3. pre-training of a DBRX-architecture model (config.json: 16 experts, 4 active)
#   4. chat fine-tuning on the generated questions (`tessera finetune create`), registered
#   5. 8-bit weights (`tessera quantize --to q8_0`: a GGUF file and the tokenizer)
#   6. evaluation on held-out "What does WORD mean?" questions (evaluate.py), for the pre-trained,
#      the fine-tuned and the 8-bit model
#   7. export: the 8-bit model, its evaluation and model card into models/tessera-dbrx-tiny-instruct
#
# FROM=stage (data, tokenizer, pretrain, finetune, quantize, evaluate, export) starts at that stage and
# reuses what WORK holds from the earlier ones.
#
# BUDGET=full (default; about 50 minutes on two cores) or BUDGET=short (a minute; what scripts/test
# runs to check that every stage works and the losses fall). WORK holds everything made on the
# way (default /tmp/tessera-chat-model); OUT is where the finished model goes (full budget only).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=${TESSERA_BIN:-$ROOT/build/tessera}
PY=${PYTHON:-$ROOT/.venv/bin/python}
BUDGET=${BUDGET:-full}
WORK=${WORK:-/tmp/tessera-chat-model}
OUT=${OUT:-$ROOT/models/tessera-dbrx-tiny-instruct}
export TESSERA_HOME=$WORK/home

# Each setting may be overridden from the environment (WORDS=400 PRETRAIN=300ba ... for a trial).
case "$BUDGET" in
  full)  : "${WORDS:=500}" "${FORTUNES:=300}" "${VOCAB:=8192}" "${PRETRAIN:=1400ba}" "${BATCH:=32}" "${SEQ:=128}" "${FT:=3ep}" "${EVAL:=200ba}" "${HELDOUT:=50}" ;;
  short) : "${WORDS:=150}" "${FORTUNES:=100}" "${VOCAB:=1024}" "${PRETRAIN:=40ba}"   "${BATCH:=4}"  "${SEQ:=64}"  "${FT:=20ba}" "${EVAL:=20ba}" "${HELDOUT:=7}" ;;
  *) echo "train.sh: BUDGET must be full or short, got '$BUDGET'" >&2; exit 2 ;;
esac

FROM=${FROM:-data}
STAGES=(data tokenizer pretrain finetune quantize evaluate export)
source "$HERE/../stages.sh"

if runs data; then
say "data"
python3 "$HERE/make_data.py" -o "$WORK/data" --words "$WORDS" --heldout "$HELDOUT" --eval-words $((WORDS / 30)) \
  --fortunes "$FORTUNES"
took data
fi

if runs tokenizer; then
say "tokenizer ($VOCAB tokens)"
"$B" tokenizer train --input "$WORK/data/corpus" --vocab-size "$VOCAB" -o "$WORK/base"
python3 - "$HERE/config.json" "$WORK/base/config.json" "$VOCAB" "$BUDGET" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["vocab_size"] = int(sys.argv[3])
if sys.argv[4] == "short":  # the same architecture, scaled down to test the recipe quickly
    config.update(d_model=64, n_layers=2)
    config["ffn_config"]["ffn_hidden_size"] = 64
json.dump(config, open(sys.argv[2], "w"), indent=2)
PY
took tokenizer
fi

if runs pretrain; then
say "pre-training ($PRETRAIN of $BATCH x $SEQ tokens)"
cat > "$WORK/pretrain.yaml" <<YAML
model: $WORK/base/config.json
train_data: $WORK/data/corpus
eval_data: $WORK/data/eval
save_folder: $WORK/pretrain
training:
  max_duration: $PRETRAIN
  global_batch_size: $BATCH
  seq_len: $SEQ
  lr: 2e-3
  warmup: 0.03
  eval_interval: $EVAL
  eval_batches: 0
  save_interval: $EVAL
  log_interval: 10
  seed: 17
YAML
rm -rf "$WORK/pretrain" "$TESSERA_HOME"
"$B" train -f "$WORK/pretrain.yaml" --follow
took pretrain
fi
BASE="$WORK/pretrain/$(cat "$WORK/pretrain/latest")"

if runs finetune; then
say "chat fine-tuning ($FT)"
"$B" finetune create --model "$BASE" --train-data "$WORK/data/chat_train.jsonl" --task chat-completion \
  --context-length 128 --batch-size "$BATCH" --training-duration "$FT" --learning-rate 1e-3 \
  --register-to main.tessera.dbrx_tiny_instruct --follow
took finetune
fi
TUNED=$("$B" models show main.tessera.dbrx_tiny_instruct --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')

if runs quantize; then
say "8-bit weights"
rm -rf "$WORK/q8_0"
"$B" quantize -m "$TUNED" --to q8_0 -o "$WORK/q8_0"
took quantize
fi

if runs evaluate; then
say "evaluation"
"$PY" "$HERE/evaluate.py" --tessera "$B" --model "$BASE" --model "$TUNED" --model "$WORK/q8_0" --data "$WORK/data" \
  --out "$WORK/eval.json"
took evaluate
fi

if [ "$BUDGET" = full ] && runs export; then
  say "export to $OUT"
  rm -rf "$OUT.tmp" && cp -r "$WORK/q8_0" "$OUT.tmp"
  cp "$WORK/eval.json" "$OUT.tmp/eval.json"
  cp "$WORK/data/stats.json" "$OUT.tmp/data_stats.json"
  python3 "$HERE/model_card.py" --work "$WORK" --out "$OUT.tmp"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
fi
say "done"
