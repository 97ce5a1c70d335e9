"""A GGUF file's scalar metadata and a few token texts, read straight from its header.

gguf-py's GGUFReader builds numpy views of every field, the whole vocabulary included: 2-4 s per file for a
49k-token model, paid twice at every `domainbot ask` (architecture + chat template). Here arrays are skipped by
their lengths, the scalars and strings are decoded in one pass per file (cached), and token texts only for the
ids asked for (tens of milliseconds).
"""

from __future__ import annotations

import functools
import mmap
import struct
from pathlib import Path

# GGUF value types -> struct format of a scalar; 8 is a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
TOKENS = "tokenizer.ggml.tokens"


class GGUFMetaError(ValueError):
    pass


class _Header:
    def __init__(self, buf: mmap.mmap | bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", "replace")

    def skip_string(self) -> None:
        self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]

    def value(self, kind: int):
        """A scalar or string; an array is skipped and given as (item type, count, offset of its first item)."""
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            start = self.pos
            if item == _STRING:
                for _ in range(count):
                    self.skip_string()
            elif item in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[item])
            else:
                for _ in range(count):
                    self.value(item)  # nested arrays: skipped as they are read
            return (item, count, start)
        if kind not in _SCALARS:
            raise GGUFMetaError(f"unknown GGUF value type {kind}")
        return self.take(_SCALARS[kind])


def read(path: Path | str, keys: tuple[str, ...] = (), token_ids: tuple[int, ...] = ()) -> dict[object, object]:
    """`keys`' scalar/string values (absent keys are left out) and, under ("token", id), those tokens' texts."""
    p = Path(path)
    st = p.stat()
    ident = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    scalars, tokens = _scan(*ident)  # one pass over the header per file, whatever the keys asked
    out: dict[object, object] = {k: scalars[k] for k in keys if k in scalars}
    if tokens and token_ids:
        out.update(_token_texts(*ident, tokens, tuple(sorted(set(token_ids)))))
    return out


def _mapped(path: str) -> mmap.mmap:
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file
            raise GGUFMetaError(f"{path} is not a GGUF file") from exc


@functools.lru_cache(maxsize=16)
def _scan(path: str, _mtime: int, _size: int) -> tuple[dict[str, object], tuple | None]:
    """Every scalar and string of the header, and where the token texts lie (arrays are skipped)."""
    buf = _mapped(path)
    try:
        h = _Header(buf)
        if bytes(buf[:4]) != b"GGUF":
            raise GGUFMetaError(f"{path} is not a GGUF file")
        h.pos = 4
        if h.take("<I") not in (2, 3):
            raise GGUFMetaError(f"{path}: unsupported GGUF version")
        h.take("<Q")  # tensor count
        scalars: dict[str, object] = {}
        tokens = None
        for _ in range(h.take("<Q")):
            key = h.string()
            kind = h.take("<I")
            value = h.value(kind)
            if kind != _ARRAY:
                scalars[key] = value
            elif key == TOKENS:
                tokens = value
        return scalars, tokens
    except struct.error as exc:
        raise GGUFMetaError(f"{path}: truncated GGUF header") from exc
    finally:
        buf.close()


@functools.lru_cache(maxsize=32)
def _token_texts(path: str, _mtime: int, _size: int, tokens: tuple, token_ids: tuple[int, ...]) -> dict:
    item, count, start = tokens
    wanted = {i for i in token_ids if 0 <= i < count}
    out: dict[object, object] = {}
    buf = _mapped(path)
    try:
        h = _Header(buf)
        h.pos = start
        for i in range(max(wanted, default=-1) + 1):
            if i in wanted:
                out[("token", i)] = h.string()
            else:
                h.skip_string()
        return out
    except struct.error as exc:
        raise GGUFMetaError(f"{path}: truncated GGUF header") from exc
    finally:
        buf.close()
