#!/usr/bin/env bash
# One-time set-up of .venv: CPU torch, a portable llama-cpp-python wheel (built once, cached), the project.
# Re-running is cheap: it does nothing unless pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${DOMAINBOT_VENV:-.venv}
LLAMA_VERSION=0.3.36
TORCH_VERSION=2.13.0
# The default -march=native build enables AMX and segfaults on these VMs (docs/design.md): build portably.
# For an NVIDIA GPU: DOMAINBOT_LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON" (see README, "GPU").
CMAKE_ARGS_DEFAULT="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
LLAMA_CMAKE_ARGS=${DOMAINBOT_LLAMA_CMAKE_ARGS:-$CMAKE_ARGS_DEFAULT}
CACHE_ROOT=${DOMAINBOT_WHEEL_CACHE:-$HOME/.cache/domainbot/wheels}
WHEELS="$CACHE_ROOT/$(printf '%s' "$LLAMA_VERSION $LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)"

stamp="$VENV/.domainbot-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)
# Git ships each adapter as adapter.gguf (llama.cpp); vLLM loads PEFT safetensors, rebuilt from it once (~30 s).
ensure_peft() {
  for d in domains/*/adapters; do
    live=$(cat "$d/current" 2>/dev/null) || continue
    if [ -f "$d/$live/adapter.gguf" ] && [ ! -d "$d/$live/peft" ]; then
      echo "==> writing the PEFT copies of the live adapters (for vLLM)"
      HF_HUB_OFFLINE=1 "$VENV/bin/domainbot" adapters export all --format peft --write-peft \
        >/dev/null 2>"$VENV/peft-export.log" ||
        echo "warning: no PEFT copies written (see $VENV/peft-export.log); vLLM needs them, llama.cpp does not"
      return
    fi
  done
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/domainbot" ]; then
  ensure_peft
  exit 0
fi

echo "==> setting up $VENV (first run takes a few minutes; the llama.cpp build is cached in $WHEELS)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip

# CPU torch first: a bare `torch` requirement would pull several GB of CUDA packages.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$PIP" install -q "torch==$TORCH_VERSION"

if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "==> building llama-cpp-python $LLAMA_VERSION once (about 4-5 min on 2 cores) with: $LLAMA_CMAKE_ARGS"
  mkdir -p "$WHEELS"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PIP" wheel --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
fi
"$PIP" install -q --find-links "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
"$PIP" install -q --find-links "$WHEELS" -e ".[dev]"

# The first decode is where the AMX crash showed: fail set-up, not the user's first question.
HF_HUB_OFFLINE=1 "$VENV/bin/python" - <<'PY'
from bot.config import load_settings
from bot.llm.llama import Runtime
rt = Runtime(load_settings())
out = rt.generate([{"role": "user", "content": "Say hello."}], max_tokens=4)
assert out.completion_tokens > 0, "the model produced no tokens"
rt.close()
print(f"==> llama.cpp OK: {rt.model_path.name} decoded {out.completion_tokens} tokens")
PY
# Questions are embedded by llama.cpp: MiniLM converted to GGUF once by llama.cpp's own converter (~5 s; the
# bot does it on first use otherwise, and falls back to transformers + torch if it can't)
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "from bot.retrieval.embeddings import convert_to_gguf, default_embed_path
print('==> embedding model for llama.cpp:', convert_to_gguf(default_embed_path()))" ||
  echo "warning: the embedding model was not converted for llama.cpp; questions will be embedded with torch"
echo "$want" > "$stamp"
ensure_peft
