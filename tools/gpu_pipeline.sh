#!/usr/bin/env bash
# `make pipeline` on a lent GPU host whose commands are cut at 10 minutes and whose checkout is
# re-synced before each command: the run goes on in the background, in a copy of the checkout
# under $WORK (default /tmp/askdraft-run), and each command waits on it. How it was used for
# the committed H100 run: README, "The GPU run".
#   tools/gpu_pipeline.sh start [MAKE_VAR=VALUE ...]  copy the checkout once, start or resume the run
#   tools/gpu_pipeline.sh wait SECONDS               until the run ends (its exit code) or SECONDS pass (3)
#   tools/gpu_pipeline.sh collect DIR                results/<model>/ and the log into DIR
set -euo pipefail
WORK=${WORK:-/tmp/askdraft-run}
MODEL_NAME=${MODEL_NAME:-SmolLM2-135M-Instruct}
cmd=${1:?usage: gpu_pipeline.sh start|wait|collect ...}; shift
running() { [ -f "$WORK/pid" ] && kill -0 "$(cat "$WORK/pid")" 2>/dev/null; }

case $cmd in
start)
  if running; then echo "already running (pid $(cat "$WORK/pid"))"; exit 0; fi
  if [ ! -d "$WORK" ]; then  # first start: a fresh results folder, never the checkout's committed one
    mkdir -p "$WORK.tmp"
    tar --exclude='./.gpu*' --exclude=./models --exclude=./.cache --exclude=./runs -cf - . | tar -xf - -C "$WORK.tmp"
    rm -rf "$WORK.tmp/results/$MODEL_NAME"
    mv "$WORK.tmp" "$WORK"
  fi
  rm -f "$WORK/rc"
  export PYTHONPATH="$WORK/tools:$WORK/plugins${PYTHONPATH:+:$PYTHONPATH}"
  (cd "$WORK" && setsid nohup bash -c 'make pipeline MODEL_NAME="$0" "$@"; echo $? > rc' "$MODEL_NAME" "$@" \
     >> pipeline.log 2>&1 < /dev/null & echo $! > "$WORK/pid")
  echo "started in $WORK (log: $WORK/pipeline.log)";;
wait)
  deadline=$((SECONDS + ${1:?seconds}))
  while running && [ $SECONDS -lt $deadline ]; do sleep 5; done
  grep -a '^== \|run_stages:' "$WORK/pipeline.log" || true
  if running; then echo "still running"; exit 3; fi
  tail -c 3000 "$WORK/pipeline.log"; exit "$(cat "$WORK/rc" 2>/dev/null || echo 1)";;
collect)
  mkdir -p "${1:?dir}"
  cp -r "$WORK/results/$MODEL_NAME" "$WORK/pipeline.log" "$1"/;;
*) echo "unknown command $cmd" >&2; exit 2;;
esac
