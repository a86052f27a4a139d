#!/usr/bin/env bash
# `make pipeline` on a lent GPU host whose commands are cut at 10 minutes and whose checkout is
# re-synced before each command: the run goes on in the background, in a copy of the checkout
# under $WORK (default /tmp/askdraft-run), and each command waits on it. How it was used for
# the committed H100 run: README, "The GPU run".
#   tools/gpu_pipeline.sh start [MAKE_VAR=VALUE ...]  copy the checkout once, start or resume the run
#   tools/gpu_pipeline.sh wait SECONDS               until the run ends (its exit code) or SECONDS pass (3)
#   tools/gpu_pipeline.sh collect DIR                results/<model>/ (as <model>.tgz) and the log into DIR
set -euo pipefail
WORK=${WORK:-/tmp/askdraft-run}
MODEL_NAME=${MODEL_NAME:-SmolLM2-135M-Instruct}
cmd=${1:?usage: gpu_pipeline.sh start|wait|collect ...}; shift
# alive = a heartbeat younger than 30 s and no exit code yet. Not `kill -0 PID`: the lent host runs
# each command in a new PID namespace, so a run started by an earlier command is invisible to it
# (seen on the H100: a second run was started beside the first one).
running() { [ -f "$WORK/heartbeat" ] && [ ! -f "$WORK/rc" ] && [ $(( $(date +%s) - $(stat -c %Y "$WORK/heartbeat") )) -lt 30 ]; }

case $cmd in
start)
  if running; then echo "already running in $WORK"; exit 0; fi
  if [ ! -d "$WORK" ]; then  # first start: a fresh results folder, never the checkout's committed one
    mkdir -p "$WORK.tmp"
    tar --exclude='./.gpu*' --exclude=./models --exclude=./.cache --exclude=./runs -cf - . | tar -xf - -C "$WORK.tmp"
    rm -rf "$WORK.tmp/results/$MODEL_NAME"
    mv "$WORK.tmp" "$WORK"
  fi
  rm -f "$WORK/rc" && touch "$WORK/heartbeat"
  export PYTHONPATH="$WORK/tools:$WORK/plugins${PYTHONPATH:+:$PYTHONPATH}"
  cd "$WORK"
  setsid nohup bash -c '(while sleep 5; do touch heartbeat; done) & beat=$!
    make pipeline MODEL_NAME="$0" "$@"; echo $? > rc; kill $beat' "$MODEL_NAME" "$@" >> pipeline.log 2>&1 < /dev/null &
  echo "started in $WORK (log: $WORK/pipeline.log)";;
wait)
  deadline=$((SECONDS + ${1:?seconds}))
  while running && [ $SECONDS -lt $deadline ]; do sleep 1; done
  grep -a '^== \|run_stages:' "$WORK/pipeline.log" || true
  if running; then echo "still running"; exit 3; fi
  tail -c 3000 "$WORK/pipeline.log"; exit "$(cat "$WORK/rc" 2>/dev/null || echo 1)";;
collect)  # one archive: the lent host's fetch leaves out folders nested deeper than $OUT/DIR/
  mkdir -p "${1:?dir}"
  tar -czf "$1/$MODEL_NAME.tgz" -C "$WORK/results" "$MODEL_NAME" && cp "$WORK/pipeline.log" "$1"/;;
*) echo "unknown command $cmd" >&2; exit 2;;
esac
