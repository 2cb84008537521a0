"""The sparse offset and time indexes: lookups against a naive model on random data,
persistence, truncation, and the checks that catch a damaged index file."""

from __future__ import annotations

import random
import struct
from pathlib import Path

from pyralog.log.index import OffsetIndex, TimeIndex

BASE = 1000


def random_entries(rng: random.Random, count: int) -> list[tuple[int, int]]:
    offsets = sorted(rng.sample(range(1, 50_000), count))
    positions = sorted(rng.sample(range(1, 5_000_000), count))
    return [(BASE + o, p) for o, p in zip(offsets, positions, strict=True)]


def naive_lookup(entries: list[tuple[int, int]], offset: int) -> tuple[int, int]:
    below = [e for e in entries if e[0] <= offset]
    return below[-1] if below else (BASE, 0)


def test_offset_lookup_matches_a_naive_model(tmp_path: Path) -> None:
    rng = random.Random(7)
    for trial in range(20):
        entries = random_entries(rng, rng.randrange(0, 200))
        index = OffsetIndex(tmp_path / f"{trial}.index", BASE)
        for offset, position in entries:
            index.append(offset, position)
        queries = [rng.randrange(BASE - 10, BASE + 51_000) for _ in range(300)]
        queries += [o for o, _ in entries] + [o - 1 for o, _ in entries]
        for q in queries:
            assert index.lookup(q) == naive_lookup(entries, q), (trial, q)
        index.close()
        # The same answers after loading the file again.
        reopened = OffsetIndex(tmp_path / f"{trial}.index", BASE)
        assert reopened.check(5_000_001) is None
        for q in queries[:50]:
            assert reopened.lookup(q) == naive_lookup(entries, q)
        reopened.close()


def test_time_index_before_matches_a_naive_model(tmp_path: Path) -> None:
    rng = random.Random(11)
    for trial in range(20):
        count = rng.randrange(0, 100)
        offsets = sorted(rng.sample(range(1, 10_000), count))
        timestamps = sorted(rng.choice(range(0, 1000, 5)) for _ in range(count))  # repeats
        index = TimeIndex(tmp_path / f"{trial}.timeindex", BASE)
        for ts, off in zip(timestamps, offsets, strict=True):
            index.append(ts, BASE + off)
        for q in range(-5, 1010, 3):
            below = [BASE + o for t, o in zip(timestamps, offsets, strict=True) if t < q]
            assert index.before(q) == (below[-1] if below else None), (trial, q)
        index.close()


def test_truncate_to_drops_entries_at_and_after(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / "x.index", BASE)
    times = TimeIndex(tmp_path / "x.timeindex", BASE)
    for i in range(1, 11):
        index.append(BASE + 10 * i, 100 * i)
        times.append(i, BASE + 10 * i)
    index.truncate_to(BASE + 50)
    times.truncate_to(BASE + 50)
    assert list(index.offsets) == [10, 20, 30, 40]
    assert list(times.offsets) == [10, 20, 30, 40]
    assert index.lookup(BASE + 1000) == (BASE + 40, 400)
    index.append(BASE + 45, 450)  # appends continue after the cut
    index.close()
    times.close()
    assert (tmp_path / "x.index").stat().st_size == 5 * 8
    assert (tmp_path / "x.timeindex").stat().st_size == 4 * 12
    reopened = OffsetIndex(tmp_path / "x.index", BASE)
    assert list(reopened.positions) == [100, 200, 300, 400, 450]
    reopened.close()


def test_replace_rewrites_the_file(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / "r.index", BASE)
    for i in range(1, 6):
        index.append(BASE + i, 10 * i)
    index.replace([(BASE + 3, 7)])
    index.close()
    reopened = OffsetIndex(tmp_path / "r.index", BASE)
    assert (list(reopened.offsets), list(reopened.positions)) == ([3], [7])
    reopened.close()


def write_raw(path: Path, fmt: str, entries: list[tuple[int, int]]) -> None:
    path.write_bytes(b"".join(struct.pack(fmt, *e) for e in entries))


def test_check_catches_damaged_offset_indexes(tmp_path: Path) -> None:
    path = tmp_path / "d.index"
    cases: dict[str, bytes | list[tuple[int, int]]] = {
        "torn": b"\x00\x00\x00\x05\x00\x00\x00\x10\x00\x00",
        "zeroed": bytes(32),  # a preallocated, never written tail
        "offsets": [(5, 100), (5, 200)],
        "positions": [(5, 100), (6, 90)],
        "past the end": [(5, 100), (9, 5000)],
    }
    for name, content in cases.items():
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            write_raw(path, ">II", content)
        index = OffsetIndex(path, BASE)
        assert index.check(segment_size=4096) is not None, name
        index.close()
    write_raw(path, ">II", [(5, 100), (6, 200)])
    index = OffsetIndex(path, BASE)
    assert index.check(segment_size=4096) is None
    index.close()


def test_check_catches_damaged_time_indexes(tmp_path: Path) -> None:
    offsets = OffsetIndex(tmp_path / "t.index", BASE)
    offsets.append(BASE + 5, 100)
    offsets.append(BASE + 9, 200)
    path = tmp_path / "t.timeindex"
    for name, entries in {
        "decreasing": [(50, 5), (40, 9)],
        "other offsets": [(50, 5), (60, 8)],
        "shorter": [(50, 5)],
    }.items():
        write_raw(path, ">qI", entries)
        times = TimeIndex(path, BASE)
        assert times.check(offsets) is not None, name
        times.close()
    path.write_bytes(struct.pack(">qI", 50, 5) + b"\x01\x02")
    times = TimeIndex(path, BASE)
    assert times.check(offsets) == "torn entry at the end"
    times.close()
    write_raw(path, ">qI", [(50, 5), (50, 9)])
    times = TimeIndex(path, BASE)
    assert times.check(offsets) is None
    assert times.before(50) is None and times.before(51) == BASE + 9
    times.close()
    offsets.close()
