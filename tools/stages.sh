# Shared by the tools/*/train.sh recipes (sourced, not run): stage selection with FROM=stage and
# per-stage timings. Before sourcing, set STAGES (the stage names in order), FROM and WORK.
case " ${STAGES[*]} " in *" $FROM "*) ;; *) echo "train.sh: FROM must be one of: ${STAGES[*]}" >&2; exit 2 ;; esac

say() { printf '\n== %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }
mkdir -p "$WORK"
# Whether stage $1 runs (it is FROM or comes after it).
runs() {
  local s seen=0
  for s in "${STAGES[@]}"; do
    [ "$s" = "$FROM" ] && seen=1
    [ "$s" = "$1" ] && return $((1 - seen))
  done
  return 1
}
# Seconds each stage took, for the model card: `took NAME` after the stage.
STAGE_START=$(date +%s.%N)
TIMINGS="$WORK/timings.json"
[ "$FROM" = "${STAGES[0]}" ] || [ ! -f "$TIMINGS" ] && echo '{}' > "$TIMINGS"
took() {
  local now; now=$(date +%s.%N)
  python3 -c 'import json,sys; p=sys.argv[1]; t=json.load(open(p)); t[sys.argv[2]]=round(float(sys.argv[3]),1); json.dump(t,open(p,"w"))' \
    "$TIMINGS" "$1" "$(python3 -c "print($now - $STAGE_START)")"
  STAGE_START=$now
}
