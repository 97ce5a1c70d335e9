"""llama.cpp's own converter scripts (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`) from the
llama-cpp-python sdist the project pins, fetched once with pip from PyPI and run in a subprocess.

Serving uses it once to turn the embedding model into a GGUF (so questions are embedded without torch); the tests
use it to convert their tiny models. No code of the scripts is copied here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_VERSION = "0.3.36"  # the llama-cpp-python the project pins: its vendored converters match its runtime

# runs a script as __main__ with its own folder on sys.path, after an optional prelude
RUNNER = ("import runpy, sys\n"
          "{prelude}"
          "sys.argv = sys.argv[1:]\n"
          "sys.path.insert(0, sys.argv[0].rpartition('/')[0])\n"
          "runpy.run_path(sys.argv[0], run_name='__main__')\n")


class ToolsUnavailable(RuntimeError):
    """llama.cpp's converter scripts could not be found or fetched (no network to PyPI)."""


def cache_dir() -> Path:
    return Path(os.environ.get("DOMAINBOT_CACHE_DIR") or Path.home() / ".cache" / "domainbot")


def llama_cpp_dir() -> Path:
    """The vendored llama.cpp of the llama-cpp-python sdist (converter scripts, gguf-py), fetched once."""
    root = cache_dir() / "llama-cpp-src"
    found = root / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp"
    if (found / "convert_lora_to_gguf.py").is_file():
        return found
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_VERSION}", "--no-deps",
               "--no-binary", ":all:", "-d", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if run.returncode != 0 or not archives:
            raise ToolsUnavailable(f"could not fetch the llama-cpp-python sdist: {run.stderr.strip()[-300:]}")
        keep = ("vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/", "vendor/llama.cpp/convert_")
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if any(k in m.name for k in keep)]
            tar.extractall(root, members=members, filter="data")
    return found


def run_script(script: str, *args: str, prelude: str = "") -> None:
    """Run one of llama.cpp's converter scripts with its own gguf-py (newer than the installed gguf)."""
    tools = llama_cpp_dir()
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env.update(PYTHONPATH=str(tools / "gguf-py"), HF_HUB_OFFLINE="1")
    code = RUNNER.format(prelude=prelude)
    run = subprocess.run([sys.executable, "-c", code, str(tools / script), *args], capture_output=True, text=True,
                         env=env, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{run.stderr[-2000:]}")
