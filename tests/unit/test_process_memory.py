"""Resident memory split into the relay's own and the pages of files it maps."""

import mmap
import os
import time

import pytest

from relay.ops.metrics import RelayCollector, WindowedRates, build_registry
from relay.ops.process import resident_memory

_MAPPED_BYTES = 8 * 1024 * 1024


def _map_and_touch(path) -> mmap.mmap:
    """Map a file of _MAPPED_BYTES and read one byte of every page."""
    path.write_bytes(os.urandom(_MAPPED_BYTES))
    with open(path, "rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    for offset in range(0, _MAPPED_BYTES, mmap.PAGESIZE):
        mapping[offset]
    return mapping


def test_pages_of_a_mapped_file_are_counted_apart(tmp_path):
    path = tmp_path / "mapped.db"
    mapping = _map_and_touch(path)
    try:
        memory = resident_memory([str(path)])
        other = resident_memory([str(tmp_path / "never-mapped.db")])
    finally:
        mapping.close()
    assert memory.mapped_files == _MAPPED_BYTES
    assert memory.own == memory.total - _MAPPED_BYTES
    assert other.mapped_files == 0
    assert resident_memory([]).mapped_files == 0


def test_a_deleted_file_still_counts_while_mapped(tmp_path):
    path = tmp_path / "mapped.db"
    mapping = _map_and_touch(path)
    try:
        path.unlink()
        memory = resident_memory([str(path)])
    finally:
        mapping.close()
    assert memory.mapped_files == _MAPPED_BYTES


async def test_memory_gauge_leaves_out_the_mapped_database(relay):
    paths = relay.storage.mapped_paths()
    collector = RelayCollector(
        relay.core,
        relay.storage,
        WindowedRates(relay.core),
        time.monotonic(),
        mapped_paths=paths,
    )
    registry = build_registry(collector)
    mapped = registry.get_sample_value("relay_database_mapped_bytes")
    own = registry.get_sample_value("relay_memory_usage_bytes")
    resident = registry.get_sample_value("process_resident_memory_bytes")
    # Opening the database read its schema through the mapping.
    assert mapped > 0
    # The parts add up to the RSS, read a moment apart.
    assert own + mapped == pytest.approx(resident, abs=1024 * 1024)
    assert paths[0] == os.path.realpath(relay.storage.path)
