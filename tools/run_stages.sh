#!/usr/bin/env bash
# Runs pipeline stages (make targets) in order and records each one's wall time in
# results/<model>/wall_times.json (read by `askdraft summarize`); stages already done are
# skipped by make and keep their recorded time.
# usage: tools/run_stages.sh [TARGET...]    env: PROFILE, PY, MODEL_NAME (as for make)
set -euo pipefail
cd "$(dirname "$0")/.."
stages=${*:-base sft phase-a phase-b merge-b drafts pairs phase-c drafts-c eval attribution judge report}
vars=(${PROFILE:+PROFILE=$PROFILE} ${PY:+PY=$PY})
times=results/${MODEL_NAME:-SmolLM2-135M-Instruct}/wall_times.json
for t in $stages; do
  if make -q "$t" "${vars[@]}" 2>/dev/null; then echo "== $t: up to date"; continue; fi
  echo "== $t"
  start=$(date +%s.%N)
  make "$t" "${vars[@]}"
  python3 - "$times" "$t" "$start" <<'PY'
import json, pathlib, sys, time
path, stage, start = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
path.parent.mkdir(parents=True, exist_ok=True)
times = json.loads(path.read_text()) if path.exists() else {}
times[stage] = round(time.time() - start, 1)
path.write_text(json.dumps(times, indent=2) + "\n")
print(f"== {stage}: {times[stage]} s")
PY
done
