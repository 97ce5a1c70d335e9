"""Loading the model must not swallow what the rest of the process writes meanwhile.

llama-cpp-python's verbose=False points file descriptors 1 and 2 at /dev/null during the load; a `serve --http`
that loaded lazily on a worker thread once lost its "listening on" line that way (a test waited 15 minutes for it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bot.config import ROOT

CHILD = textwrap.dedent("""
    import logging, sys, threading, time
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    from bot.config import load_settings
    from bot.llm.llama import Runtime
    stop, n = threading.Event(), [0]
    def chatter():
        while not stop.is_set():
            n[0] += 1
            print(f"line {n[0]}", flush=True)
            logging.info("log %d", n[0])
            time.sleep(0.0005)
    t = threading.Thread(target=chatter)
    t.start()
    runtime = Runtime(load_settings())
    while n[0] < 50:  # a fast load still overlaps some writes
        time.sleep(0.001)
    stop.set()
    t.join()
    print(f"printed {n[0]}", flush=True)
    print(runtime.generate([{"role": "user", "content": "hi"}], max_tokens=2).text is not None, flush=True)
""")


@pytest.mark.slow
def test_output_written_while_the_model_loads_is_not_lost():
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.splitlines()
    printed = int(out[-2].split()[1])
    assert [line for line in out if line.startswith("line ")] == [f"line {i}" for i in range(1, printed + 1)]
    logged = [line for line in done.stderr.splitlines() if line.startswith("log ")]
    assert logged == [f"log {i}" for i in range(1, printed + 1)]
    assert out[-1] == "True"  # the model still answers after the quiet load
    assert "llama_model_loader" not in done.stderr and "Model metadata" not in done.stderr  # and it stays quiet
