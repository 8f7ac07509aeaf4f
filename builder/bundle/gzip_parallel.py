"""Parallel gzip: one gzip member per chunk, compressed on every core.

Concatenated gzip members are one valid gzip stream (RFC 1952 §2.2; gunzip,
Python's gzip and EC2 all read them), so chunks can be compressed
independently and written in order.

Three engines, same output format:
- "libdeflate" (the `deflate` package): whole-buffer DEFLATE, which suits
  one member per chunk. On the bench's image data (binaries, text, man
  pages) its level 5 compresses smaller than zlib's level 6 (0.393 vs 0.395
  of the input) at about 3 times zlib's speed per core, 1.6 times zlib-ng's.
- "zlib-ng" (the `zlib-ng` package): about twice zlib's speed per core, but
  its level 6 output is about 1 % larger than zlib's.
  The Python packages hold the GIL while compressing, so with them chunks
  would have to go to worker processes (spawned, so no threads are forked):
  start-up, pickling 4 MiB chunks through pipes and processes stalling on
  a busy machine made that pipeline slower than pigz. So libdeflate's C
  API is called through ctypes (a ctypes call releases the GIL): one
  compressor per thread of a thread pool, chunks passed by pointer, no
  copies. The library is the one the `deflate` package links in and
  exports (newer than Debian 12's libdeflate0 1.14 and about 10 % faster
  at level 5 on the bench's image, same output size), else libdeflate0.
  Without either, the `deflate` package runs in worker processes (same
  output).
- "zlib" (the standard library, which releases the GIL): a thread pool.
"auto" picks libdeflate when it is installed and the input is large enough
to repay starting the workers. Each engine has its default level
(DEFAULT_LEVEL): the fastest one whose output is no larger than gzip -6's.

At most `2 × workers` chunks are in flight; an all-zero chunk (free space
that is not a hole) reuses one compressed copy instead of compressing again.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Literal, TypeAlias

try:
    from zlib_ng import zlib_ng
except ImportError:  # pragma: no cover - zlib-ng is a declared dependency
    zlib_ng = None  # type: ignore[assignment]
try:
    import deflate as libdeflate
except ImportError:  # pragma: no cover - deflate is a declared dependency
    libdeflate = None  # type: ignore[assignment]


def _libdeflate_candidates() -> list[str]:
    """Where libdeflate's C API may be: the `deflate` package's extension
    first (it links a newer libdeflate statically and exports its API; on
    the bench's image its level 5 runs about 10 % faster than Debian 12's
    1.14, with the same output size), then Debian's libdeflate0."""
    own = getattr(getattr(libdeflate, "_deflate", None), "__file__", None)
    return [own, "libdeflate.so.0"] if own else ["libdeflate.so.0"]


_LIBDEFLATE_FUNCTIONS = ("libdeflate_alloc_compressor", "libdeflate_free_compressor",
                         "libdeflate_gzip_compress_bound", "libdeflate_gzip_compress")


def _load_libdeflate(names: Iterable[str]) -> ctypes.CDLL | None:
    """The first of `names` that has libdeflate's compression API, with its
    functions' signatures, or None."""
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            for function in _LIBDEFLATE_FUNCTIONS:
                getattr(lib, function)
        except (OSError, AttributeError):  # not loadable, or built with hidden symbols
            continue
        lib.libdeflate_alloc_compressor.restype = ctypes.c_void_p
        lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
        lib.libdeflate_free_compressor.restype = None
        lib.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
        lib.libdeflate_gzip_compress_bound.restype = ctypes.c_size_t
        lib.libdeflate_gzip_compress_bound.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.libdeflate_gzip_compress.restype = ctypes.c_size_t
        lib.libdeflate_gzip_compress.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
        return lib
    return None  # pragma: no cover - libdeflate0 is in the Makefile's APT_PACKAGES


_LIBDEFLATE = _load_libdeflate(_libdeflate_candidates())

#: a chunk: the tar stream hands on its own bytearrays
Chunk: TypeAlias = bytes | bytearray
Engine = Literal["auto", "zlib", "zlib-ng", "libdeflate"]
Chosen = Literal["zlib", "zlib-ng", "libdeflate"]
PROCESS_MIN_BYTES = 64 * 1024 * 1024
#: Per engine, the level used when none is asked for (see the module doc).
DEFAULT_LEVEL: dict[Chosen, int] = {"zlib": 6, "zlib-ng": 6, "libdeflate": 5}


def gzip_member(data: Chunk, level: int) -> bytes:
    """One complete gzip member with the standard library's zlib."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


def gzip_member_ng(data: Chunk, level: int) -> bytes:
    """One complete gzip member with zlib-ng (run in a worker process)."""
    assert zlib_ng is not None
    comp = zlib_ng.compressobj(level, zlib_ng.DEFLATED, 31)
    return bytes(comp.compress(data) + comp.flush())


def gzip_member_libdeflate(data: Chunk, level: int) -> bytes:
    """One complete gzip member with libdeflate (run in a worker process)."""
    assert libdeflate is not None
    return bytes(libdeflate.gzip_compress(data, level))


class LibdeflateThreads:
    """gzip members from Debian's libdeflate through ctypes, GIL released.

    One compressor and output buffer per thread (a libdeflate compressor is
    not thread-safe); `close` frees them all once the pool is shut down.
    """

    def __init__(self, level: int, lib: ctypes.CDLL | None = None) -> None:
        lib = lib or _LIBDEFLATE
        if lib is None:
            raise RuntimeError("libdeflate.so.0 is not installed")
        self._lib = lib
        self._level = level
        self._local = threading.local()
        self._lock = threading.Lock()
        self._compressors: list[int] = []

    def _state(self, size: int) -> tuple[int, ctypes.Array[ctypes.c_char]]:
        local = self._local
        comp = getattr(local, "comp", None)
        if comp is None:
            comp = self._lib.libdeflate_alloc_compressor(self._level)
            if not comp:
                raise MemoryError("libdeflate_alloc_compressor failed")
            with self._lock:
                self._compressors.append(comp)
            local.comp, local.out = comp, ctypes.create_string_buffer(0)
        bound = self._lib.libdeflate_gzip_compress_bound(comp, size)
        if len(local.out) < bound:
            local.out = ctypes.create_string_buffer(bound)
        return comp, local.out

    def __call__(self, data: Chunk) -> bytes:
        comp, out = self._state(len(data))
        # a pointer to the caller's buffer: no copy of the chunk
        src = (ctypes.c_char * len(data)).from_buffer(data) if isinstance(data, bytearray) \
            else data
        n = self._lib.libdeflate_gzip_compress(comp, src, len(data), out, len(out))
        if not n:  # pragma: no cover - the buffer is the library's own bound
            raise RuntimeError("libdeflate_gzip_compress: output buffer too small")
        return ctypes.string_at(out, n)

    def close(self) -> None:
        with self._lock:
            for comp in self._compressors:
                self._lib.libdeflate_free_compressor(comp)
            self._compressors.clear()


_MEMBER = {"zlib": gzip_member, "zlib-ng": gzip_member_ng, "libdeflate": gzip_member_libdeflate}
_MODULE = {"zlib": zlib, "zlib-ng": zlib_ng, "libdeflate": libdeflate}


def choose_engine(engine: Engine, input_size: int) -> Chosen:
    if engine != "auto":
        if _MODULE[engine] is None:
            raise RuntimeError(f"the {engine} engine's package is not installed")
        return engine
    if input_size < PROCESS_MIN_BYTES:
        return "zlib"
    return "libdeflate" if libdeflate is not None else "zlib-ng" if zlib_ng is not None else "zlib"


def _rechunk(blocks: Iterable[Chunk], size: int) -> Iterator[Chunk]:
    buf = bytearray()
    for block in blocks:
        if not buf and len(block) == size:
            yield block
            continue
        buf += block
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def parallel_gzip(
    blocks: Iterable[Chunk],
    *,
    chunk_size: int,
    level: int | None = None,
    workers: int = 0,
    engine: Chosen = "zlib",
    release: Callable[[Chunk], None] | None = None,
) -> Iterator[bytes]:
    """Yield, in order, the gzip members of `blocks` cut into `chunk_size` chunks.

    `release(chunk)` is called once no compressor reads `chunk` any more, so
    the caller may reuse its buffer."""
    workers = workers or os.cpu_count() or 1
    level = DEFAULT_LEVEL[engine] if level is None else level
    compress = _MEMBER[engine]
    threaded: LibdeflateThreads | None = None
    pool: Executor
    if engine == "libdeflate" and _LIBDEFLATE is not None:
        threaded = LibdeflateThreads(level)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="gzip")
    elif engine == "zlib":
        pool = ThreadPoolExecutor(workers, thread_name_prefix="gzip")
    else:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    zero_chunk = bytes(chunk_size)
    zero_member: bytes | None = None
    pending: deque[tuple[Future[bytes] | bytes, Chunk | None]] = deque()
    limit = 2 * workers

    def oldest() -> bytes:
        item, chunk = pending.popleft()
        member = item if isinstance(item, bytes) else item.result()
        if chunk is not None and release is not None:
            release(chunk)
        return member

    try:
        for chunk in _rechunk(blocks, chunk_size):
            if chunk == zero_chunk:
                if zero_member is None:
                    zero_member = gzip_member(zero_chunk, level)
                pending.append((zero_member, None))
                if release is not None:
                    release(chunk)
            elif threaded is not None:
                pending.append((pool.submit(threaded, chunk), chunk))
            else:
                pending.append((pool.submit(compress, chunk, level), chunk))
            # hand on what is done (keeps the buffers few), and never more than `limit` queued
            while len(pending) > limit or (pending and _ready(pending[0][0])):
                yield oldest()
        while pending:
            yield oldest()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if threaded is not None:
            threaded.close()


def _ready(item: Future[bytes] | bytes) -> bool:
    return isinstance(item, bytes) or item.done()
