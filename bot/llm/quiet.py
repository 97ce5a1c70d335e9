"""Load a llama.cpp model without silencing the rest of the process.

llama-cpp-python's `verbose=False` quiets loading by pointing the process's file descriptors 1 and 2 at
/dev/null (and swapping sys.stdout/sys.stderr) for the load. In a server that loads lazily on a worker thread,
whatever any other thread writes meanwhile is lost: `serve --http` once printed its "listening on" line into
/dev/null, and log records in that window go the same way. So load verbose, and keep its chatter out instead:
the Python-level prints go to a buffer (sys.stderr only; handlers already hold their own streams), the C log
goes through the library's logger set to errors only, and the object is made quiet for later calls.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any


def load_llama(*args: Any, **kwargs: Any) -> Any:
    import llama_cpp
    from llama_cpp import _logger

    kwargs["verbose"] = True
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stderr(chatter):
            llm = llama_cpp.Llama(*args, **kwargs)
    finally:
        _logger.set_verbose(False)  # the C log: errors only, as verbose=False would have it
    llm.verbose = False  # no timing report after every call
    return llm
