"""Resident memory split into the relay's own and the pages of files it maps."""

import mmap
import os

from relay.ops.process import ResidentMemory, mapped_file_bytes

_MAPPED_BYTES = 8 * 1024 * 1024


def _map_and_touch(path) -> mmap.mmap:
    """Map a file of _MAPPED_BYTES and read one byte of every page."""
    path.write_bytes(os.urandom(_MAPPED_BYTES))
    with open(path, "rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    for offset in range(0, _MAPPED_BYTES, mmap.PAGESIZE):
        mapping[offset]
    return mapping


def test_mapped_file_pages_counted_apart(tmp_path):
    path = tmp_path / "mapped.db"
    mapping = _map_and_touch(path)
    try:
        mapped = mapped_file_bytes([str(path)])
        other = mapped_file_bytes([str(tmp_path / "never-mapped.db")])
    finally:
        mapping.close()
    assert mapped == _MAPPED_BYTES
    assert ResidentMemory(total=100 * _MAPPED_BYTES, mapped_files=mapped).own == (
        99 * _MAPPED_BYTES
    )
    assert other == 0
    assert mapped_file_bytes([]) == 0


def test_deleted_mapped_file_still_counts(tmp_path):
    path = tmp_path / "mapped.db"
    mapping = _map_and_touch(path)
    try:
        path.unlink()
        mapped = mapped_file_bytes([str(path)])
    finally:
        mapping.close()
    assert mapped == _MAPPED_BYTES
