#!/usr/bin/env bash
# `make pipeline` on a lent GPU host whose commands are cut at 10 minutes and whose checkout is
# re-synced before each command: the run goes on in the background, in a copy of the checkout
# under $WORK (default /tmp/askdraft-run), and each command waits on it. How the committed H100/H200
# runs (results/README.md) were made: tools/gpu_bundle.sh and `make data` where PyPI is reachable;
# on the host, command 1 (carrying .gpu .gpuparts1 data), command 2 (carrying .gpuparts2), then
# `wait` again until it returns 0:
#   . .gpu/env.sh .gpu && tools/gpu_pipeline.sh gguf .gpuparts1 && mkdir -p /tmp/data && cp -r data/. /tmp/data/
#   . /tmp/site/env.sh && tools/gpu_pipeline.sh gguf .gpuparts2 && export ASKDRAFT_COMMIT=<commit> && \
#     tools/gpu_pipeline.sh start PROFILE=gpu-fast PY=python3 JUDGE_SERVE=models/base/SmolLM2-135M-Instruct && \
#     cp -r /tmp/data/. /tmp/askdraft-run/data/ && tools/gpu_pipeline.sh wait 540
#   . /tmp/site/env.sh && tools/gpu_pipeline.sh wait 560; tools/gpu_pipeline.sh collect $OUT/run
# `start` copies the checkout once (without the committed results) and runs `make pipeline` there in
# the background; RUN=NAME ... start ... C_VARIANT=NAME runs a phase C variant beside the default run
# once data/pairs.jsonl exists. On a GPU box with internet, plain `make pipeline PROFILE=gpu-fast` does all this.
#   tools/gpu_pipeline.sh start [MAKE_VAR=VALUE ...]  copy the checkout once, start or resume the run
#   tools/gpu_pipeline.sh wait SECONDS               until the run ends (its exit code) or SECONDS pass (3)
#   tools/gpu_pipeline.sh collect DIR                results/<model>/ (as <model>.tgz) and the log into DIR
#   tools/gpu_pipeline.sh gguf PARTS_DIR             append a part of the embedded GGUF (tools/gpu_bundle.sh
#                                                    splits it) to $ASKDRAFT_CACHE; the last part checks its sha256
# RUN=NAME (default pipeline) names a run: its log, exit code and heartbeat are $WORK/NAME.*, so phase C
# variants (C_VARIANT=...) can run beside the default pipeline in the same copy once its drafts exist.
# The results folder is MODEL_NAME (default BASE_NAME=SmolLM2-135M-Instruct, plus -VARIANT for C_VARIANT=VARIANT).
set -euo pipefail
WORK=${WORK:-/tmp/askdraft-run}
RUN=${RUN:-pipeline}
TARGET=${TARGET:-pipeline}  # or kfold (MODEL_NAME then names its pooled results folder), multi-gpu-bench, bench, speed-study
export ASKDRAFT_CACHE=${ASKDRAFT_CACHE:-/tmp/askdraft-cache}
GGUF=$ASKDRAFT_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
cmd=${1:?usage: gpu_pipeline.sh start|wait|collect|gguf ...}; shift
variant=
for a in "$@"; do case $a in C_VARIANT=?*) variant=-${a#C_VARIANT=};; esac; done
BASE_NAME=${BASE_NAME:-SmolLM2-135M-Instruct}
MODEL_NAME=${MODEL_NAME:-$BASE_NAME$variant}
LOG=$WORK/$RUN.log RC=$WORK/$RUN.rc BEAT=$WORK/$RUN.heartbeat
# alive = a heartbeat younger than 30 s and no exit code yet. Not `kill -0 PID`: the lent host runs
# each command in a new PID namespace, so a run started by an earlier command is invisible to it
# (seen on the H100: a second run was started beside the first one).
running() { [ -f "$BEAT" ] && [ ! -f "$RC" ] && [ $(( $(date +%s) - $(stat -c %Y "$BEAT") )) -lt 30 ]; }

case $cmd in
start)
  if running; then echo "$RUN already running in $WORK"; exit 0; fi
  if [ ! -d "$WORK" ]; then  # first start: fresh results folders, never the checkout's committed ones
    mkdir -p "$WORK.tmp"
    tar --exclude='./.gpu*' --exclude=./models --exclude=./.cache --exclude=./runs -cf - . | tar -xf - -C "$WORK.tmp"
    rm -rf "$WORK.tmp/results/$BASE_NAME"*
    mv "$WORK.tmp" "$WORK"
  fi
  rm -f "$RC" && touch "$BEAT"
  export PYTHONPATH="$WORK/tools:$WORK/plugins${PYTHONPATH:+:$PYTHONPATH}"
  cd "$WORK"
  setsid nohup bash -c 'beat=$0 rc=$1; shift; (while sleep 5; do touch "$beat"; done) & b=$!
    make "$@"; echo $? > "$rc"; kill $b' "$BEAT" "$RC" "$TARGET" $([ "$TARGET" = pipeline ] && echo MODEL_NAME="$MODEL_NAME") "$@" >> "$LOG" 2>&1 < /dev/null &
  echo "started $RUN in $WORK (log: $LOG)";;
wait)
  deadline=$((SECONDS + ${1:?seconds}))
  while running && [ $SECONDS -lt $deadline ]; do sleep 1; done
  grep -a '^== \|run_stages:' "$LOG" || true
  if running; then echo "still running"; exit 3; fi
  tail -c 3000 "$LOG"; exit "$(cat "$RC" 2>/dev/null || echo 1)";;
collect)  # one archive: the lent host's fetch leaves out folders nested deeper than $OUT/DIR/
  mkdir -p "${1:?dir}"
  if [ -d "$WORK/results/$MODEL_NAME" ]; then tar -czf "$1/$MODEL_NAME.tgz" -C "$WORK/results" "$MODEL_NAME"; fi
  cp "$LOG" "$1"/
  # make bench / speed-study (TARGET=bench or speed-study): the bench files and their logs, as far as they got
  (cd "$WORK" && for f in results/bench.json results/bench.png results/bench_generation.json results/performance.md runs/bench*.log; do
     [ -f "$f" ] && cp "$f" "$1"/; done; true)
  # make multi-gpu-bench (TARGET=multi-gpu-bench): its JSON/PNG results and per-mode logs and recipes
  if [ -d "$WORK/results/multi_gpu" ]; then
    tar -czf "$1/multi_gpu.tgz" -C "$WORK" results/multi_gpu $(cd "$WORK" && ls -d runs/multi_gpu/*/*.log runs/multi_gpu/*/*.yaml 2>/dev/null)
  fi
  if [ -d "$WORK/runs/kfold" ]; then  # the folds' logs, selections, reports and per-fold results, so far
    dest=$(cd "$1" && pwd)
    (cd "$WORK/runs/kfold" && shopt -s nullglob && files=(fold_*/kfold.log fold_*/selection.json fold_*/data/MANIFEST.json \
      fold_*/data/sft/REPORT.json fold_*/data/drafts/*/REPORT.json fold_*/data/pairs*.report.json fold_*/results \
      fold_*/models/*/trainer_state.json fold_*/models/*/*/ROUND.json) && tar -czf "$dest/kfold-folds.tgz" "${files[@]}")
  fi;;
gguf)
  mkdir -p "$ASKDRAFT_CACHE"
  [ -f "$GGUF" ] && { echo "$GGUF is already there"; exit 0; }
  cat "${1:?parts dir}"/gguf.part* >> "$GGUF.partial"
  if [ -f "$1/gguf.sha256" ]; then
    [ "$(sha256sum < "$GGUF.partial" | cut -d' ' -f1)" = "$(cat "$1/gguf.sha256")" ] \
      || { echo "error: $GGUF.partial does not match $1/gguf.sha256 (parts missing or out of order)" >&2; rm -f "$GGUF.partial"; exit 1; }
    mv "$GGUF.partial" "$GGUF" && echo "$GGUF ready"
  fi;;
*) echo "unknown command $cmd" >&2; exit 2;;
esac
