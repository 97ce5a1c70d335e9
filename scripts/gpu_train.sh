#!/usr/bin/env bash
# Train the three domain adapters at once on a lent GPU box (the `device` tool), without llama.cpp there.
#
#   bash scripts/gpu_train.sh prepare   # HERE: gguf wheel into .whl/, the base GGUF split into .gpu/pN/, run plan
#   bash scripts/gpu_train.sh stage     # THERE: keep the carried base part(s) outside the repo (warm machine)
#   bash scripts/gpu_train.sh train     # THERE: stage, then the recipes in parallel, each run tarred to $OUT/<name>.tar
#
# Why staging: the base (SmolLM2-135M-Instruct.Q4_1.gguf, 98 MB) is larger than all a call may carry (64 MiB,
# the repo's ~45 MB included), and Q4_1 weights do not compress (zstd -19: 90 MB). So each call carries one part;
# a warm machine keeps what earlier calls left in $STAGE (outside the repo), and the call that completes the file
# checks its sha256 and trains. A machine that went cold between calls lost its parts: `stage` says which.
#
# Each run: `domainbot train <d> ... --no-publish --device cuda` (python -m training.cli's parser, so nothing of
# Slack or llama.cpp is imported), DOMAINBOT_MODEL = the staged GGUF (the hash publish checks is the same file's).
# Publish here afterwards: tar -xf <name>.tar -C runs/<d>/<name> && domainbot publish <d> runs/<d>/<name>.
#
# Environment (for a CPU dry run here): PYTHON, DEVICE (cuda), EXTRA ("--max-steps 2 --batch-size 4"), ONLY
# (recipe names), RUN_TIMEOUT (s per run), STAGE, OUT, SKIP_WHEELS=1.
set -uo pipefail
cd "$(dirname "$0")/.."

# name | domain | flags. Warm starts from the live adapters keep what they learnt (TFNS macro-F1 0.871, CUAD
# yes/no 0.817) at a fraction of the steps, so the RAG rows get most of the ~5 minutes. Estimated tokens
# (mean tokens per task x rows x epochs) and time at 13k tokens/s per run (4-6 runs shared an H100 at 12-16k):
#   finance 3.8 M (~5 min), legal 2.7 M (~3.5 min), medical 2.0 M (~2.5 min), + ~1 min loading each.
RECIPES=(
  "finance_rag|finance|--warm-start domains/finance/adapters/v2 --extra-file train_tfns_full.jsonl --extra-file train_rag.jsonl --cap tfns_sentiment=3000 --balance tfns_sentiment --cap tatqa_hybrid_qa=600 --cap finance_rag_arith=500 --epochs 2 --lr 3e-4 --batch-size 64"
  "legal_rag|legal|--warm-start domains/legal/adapters/v2 --extra-file train_rag.jsonl --cap cuad_yes_no=1600 --cap cuad_clause_type=300 --cap legal_rag=750 --cap legal_rag_missing=150 --epochs 2 --lr 3e-4 --batch-size 32"
  "finance_rag3|finance|--warm-start domains/finance/adapters/v2 --extra-file train_tfns_full.jsonl --extra-file train_rag.jsonl --cap tfns_sentiment=2400 --balance tfns_sentiment --cap tatqa_hybrid_qa=300 --cap finance_rag_arith=800 --epochs 3 --lr 3e-4 --batch-size 64"
  "legal_rag3|legal|--warm-start domains/legal/adapters/v2 --extra-file train_rag.jsonl --cap cuad_yes_no=1600 --cap cuad_clause_type=300 --cap legal_rag=1200 --cap legal_rag_missing=250 --epochs 3 --lr 3e-4 --batch-size 32"
  "medical_rag4|medical|--extra-file train_rag.jsonl --cap medquad_qa=200 --cap pubmedqa_reasoning=500 --epochs 4 --lr 5e-4 --batch-size 32"
  "medical_rag|medical|--extra-file train_rag.jsonl --cap medquad_qa=400 --cap pubmedqa_reasoning=500 --epochs 3 --lr 5e-4 --batch-size 32"
)

BASE_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
LIMIT=$((64 * 1024 * 1024))  # what one device call may carry, the working tree included
MARGIN=$((2 * 1024 * 1024))  # files the lead or helpers may add before the call
PYTHON=${PYTHON:-python3}
STAGE=${STAGE:-/root/domainbot-stage}
OUT=${OUT:-/tmp/domainbot-out}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
ONLY=${ONLY:-}
RUN_TIMEOUT=${RUN_TIMEOUT:-540}  # a run still going after this is stopped (SIGINT: checkpoint, no adapter)

die() { echo "gpu_train: $*" >&2; exit 2; }

tree_bytes() {  # what a device call sends besides carried paths: tracked + untracked-not-ignored files
  git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}'
}

prepare() {
  local venv_py=${VENV_PYTHON:-.venv/bin/python} base gguf_version tree wheels room n size
  base=$("$venv_py" -c "from bot.llm.llama import embedded_model_path; print(embedded_model_path())") || die "no .venv: run make setup"
  for pat in /.gpu/ /.whl/; do grep -qxF "$pat" .git/info/exclude 2>/dev/null || echo "$pat" >> .git/info/exclude; done
  # transformers reads GGUF through the gguf package, which the GPU image lacks (pure Python, deps are there)
  gguf_version=$("$venv_py" -c "import importlib.metadata as m; print(m.version('gguf'))")
  mkdir -p .whl
  ls .whl/gguf-"$gguf_version"-*.whl >/dev/null 2>&1 || "$venv_py" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "gguf==$gguf_version" || die "could not download the gguf wheel"
  rm -rf .gpu && mkdir -p .gpu/meta
  tree=$(tree_bytes)
  wheels=$(du -sb .whl | cut -f1)
  room=$((LIMIT - tree - wheels - MARGIN))
  [ "$room" -gt $((4 * 1024 * 1024)) ] || die "the working tree ($tree bytes) leaves no room for the base"
  size=$(stat -c %s "$base")
  n=$(((size + room - 1) / room))
  split -n "$n" -d -a 1 "$base" .gpu/part  # n equal pieces: .gpu/part0 ...
  local i=1 parts=()
  for f in .gpu/part?; do
    mkdir -p ".gpu/p$i" && mv "$f" ".gpu/p$i/base.part$((i - 1))"
    parts+=("$(sha256sum ".gpu/p$i/base.part$((i - 1))" | cut -c1-64)")
    i=$((i + 1))
  done
  { echo "name=$BASE_NAME"; echo "size=$size"; echo "sha256=$(sha256sum "$base" | cut -c1-64)"; echo "parts=$n"
    for j in "${!parts[@]}"; do echo "part$j=${parts[$j]}"; done; } > .gpu/meta/base.txt
  echo "tree $((tree / 1048576)) MiB + wheels $((wheels / 1024)) KiB; base $((size / 1048576)) MiB in $n parts of $((room / 1048576)) MiB or less"
  echo "device calls, one right after another (a machine idle ~30 s goes back with the parts it held):"
  for j in $(seq 1 "$n"); do
    if [ "$j" -lt "$n" ]; then
      echo "  run(command='bash scripts/gpu_train.sh stage', carry=['.gpu/meta', '.gpu/p$j'], timeout_s=120)"
    else
      echo "  run(command='bash scripts/gpu_train.sh train', carry=['.gpu/meta', '.gpu/p$j', '.whl'], timeout_s=600)"
    fi
  done
}

stage() {  # move carried parts out of the repo (a later call's copy may replace it), then assemble if all came
  [ -f .gpu/meta/base.txt ] || die ".gpu/meta/base.txt was not carried (run prepare here, carry .gpu/meta)"
  local n sha want i got
  n=$(sed -n 's/^parts=//p' .gpu/meta/base.txt)
  sha=$(sed -n 's/^sha256=//p' .gpu/meta/base.txt)
  mkdir -p "$STAGE"
  if [ -f "$STAGE/$BASE_NAME" ] && [ "$(cat "$STAGE/$BASE_NAME.sha256" 2>/dev/null)" = "$sha" ]; then
    echo "base: $STAGE/$BASE_NAME (staged earlier)"; return 0
  fi
  for f in .gpu/p*/base.part*; do
    [ -f "$f" ] || continue
    i=${f##*base.part}
    want=$(sed -n "s/^part$i=//p" .gpu/meta/base.txt)
    got=$(sha256sum "$f" | cut -c1-64)
    [ "$got" = "$want" ] || die "$f: sha256 $got, expected $want"
    cp "$f" "$STAGE/base.part$i"
  done
  local missing=()
  for i in $(seq 0 $((n - 1))); do [ -f "$STAGE/base.part$i" ] || missing+=("p$((i + 1))"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "staged $((n - ${#missing[@]})) of $n parts in $STAGE; still to carry: ${missing[*]}"
    return 1
  fi
  for i in $(seq 0 $((n - 1))); do cat "$STAGE/base.part$i"; done > "$STAGE/$BASE_NAME.tmp"
  got=$(sha256sum "$STAGE/$BASE_NAME.tmp" | cut -c1-64)
  [ "$got" = "$sha" ] || die "assembled base has sha256 $got, expected $sha"
  mv "$STAGE/$BASE_NAME.tmp" "$STAGE/$BASE_NAME" && echo "$sha" > "$STAGE/$BASE_NAME.sha256"
  rm -f "$STAGE"/base.part*
  echo "base: $STAGE/$BASE_NAME (sha256 ${sha:0:12}, assembled from $n parts)"
}

# The `domainbot train` parser without bot.cli's other command modules (Slack, llama.cpp are not there).
ENTRY='
import argparse, sys
from bot.config import load_settings
from training import cli
parser = argparse.ArgumentParser(prog="domainbot")
cli.register(parser.add_subparsers(dest="command"))
args = parser.parse_args(sys.argv[1:])
sys.exit(int(args.func(args, load_settings()) or 0))
'

summary() {  # one line per run from its result.json
  "$PYTHON" - "$@" <<'PY'
import json, sys
from pathlib import Path
for arg in sys.argv[1:]:
    name, _, path = arg.partition("=")
    if not path or not Path(path).is_file():
        print(f"{name}: no result.json (see {name}.log in {name}.tar or the output above)")
        continue
    r = json.loads(Path(path).read_text())
    losses = r.get("losses") or []
    tail = losses[-10:]
    print(f"{name}: {r['examples']} examples, {r['steps']}/{r['total_steps']} steps x {r['config']['batch_size']}, "
          f"{r['seconds']:.0f} s, {r['tokens'] / max(r['seconds'], 1e-9):.0f} tokens/s, {r['tokens'] / 1e6:.2f} M tokens, "
          f"final loss {sum(tail) / max(len(tail), 1):.3f} (first {losses[0] if losses else float('nan'):.3f}), "
          f"tasks {r.get('task_counts')}, device {r['device']}, data {r['data_hash']}")
PY
}

train() {
  stage || exit 1
  local base="$STAGE/$BASE_NAME"
  if [ -z "${SKIP_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || die "wheel install failed"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DOMAINBOT_MODEL="$base" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  "$PYTHON" -c "import torch, transformers, peft, gguf; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
    'transformers', transformers.__version__, 'peft', peft.__version__, 'gguf ok')" || die "python packages missing"
  [ "$DEVICE" != cuda ] || nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
  mkdir -p "$OUT"
  local names=() pids=() spec name domain flags t0=$SECONDS
  for spec in "${RECIPES[@]}"; do
    IFS='|' read -r name domain flags <<< "$spec"
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    mkdir -p "/tmp/runs/$name"
    # 12288 padded tokens per forward pass: fewer launches per step than 8192; six runs at 12288 needed 68-71 GB
    # of an H100 (README, GPU), three fit. --threads 4: the runs' CPU work shares the 16 cores.
    # shellcheck disable=SC2086  # flags are words on purpose
    DOMAINBOT_RUNS_DIR="/tmp/runs/$name" timeout -s INT "$RUN_TIMEOUT" "$PYTHON" -c "$ENTRY" train "$domain" $flags \
      --seed 0 --threads 4 --device "$DEVICE" --micro-tokens 12288 --no-publish $EXTRA \
      > "/tmp/runs/$name/train.log" 2>&1 &
    names+=("$name"); pids+=($!)
    echo "started $name ($domain): $flags"
  done
  local i rc results=()
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"; rc=$?
    name=${names[$i]}
    echo "--- $name exited $rc after $((SECONDS - t0)) s; log tail:"
    tr '\r' '\n' < "/tmp/runs/$name/train.log" | grep -v '^\s*$' | tail -n 4
    local result run
    result=$(find "/tmp/runs/$name" -name result.json | head -n 1)
    if [ -n "$result" ]; then
      run=$(dirname "$result")
      cp "/tmp/runs/$name/train.log" "$run/train.log"
      tar -C "$run" -cf "$OUT/$name.tar" peft result.json train.log && echo "wrote $OUT/$name.tar ($(du -h "$OUT/$name.tar" | cut -f1))"
    else
      tar -C "/tmp/runs/$name" -cf "$OUT/$name.tar" train.log
    fi
    results+=("$name=$result")
  done
  echo "=== summary (${DEVICE}, $((SECONDS - t0)) s wall)"
  summary "${results[@]}" | tee "$OUT/summary.txt"
}

case "${1:-}" in
  prepare) prepare ;;
  stage) stage ;;
  train) train ;;
  *) die "usage: $0 prepare|stage|train" ;;
esac
