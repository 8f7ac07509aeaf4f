"""Sparse files: where the data is (SEEK_DATA / SEEK_HOLE), for uploads and bundles."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def data_extents(fd: int, size: int, start: int = 0) -> list[Extent]:
    """The file's data regions in [start, size) (everything else is a hole)."""
    extents: list[Extent] = []
    pos = start
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            if exc.errno == errno.EINVAL:  # filesystem without SEEK_DATA
                return [Extent(pos, size - pos)]
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append(Extent(start, end - start))
        pos = end
    return extents
