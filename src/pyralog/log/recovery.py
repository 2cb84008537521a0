"""Opening a partition's directory: which segments there are, and what a crash tore.

close() leaves an empty ``.clean`` marker after fsyncing everything; open() removes it
(durably, before anything else is written) and so knows whether the last run ended
cleanly. Without the marker the last segment is recovered: every batch is CRC-checked
and the file cut at the first torn or damaged one (Segment.recover). Segments before it
were fsynced when they rolled, so they are not read whole. With or without the marker,
every segment's indexes are checked and its end found by walking the headers after the
last index entry; a segment whose walk fails is recovered too. Index files without a log
and empty segments that are not the last are removed. Consecutive segments must not
overlap (StorageError: a person must look); a gap between them is reported, not fatal.

Hand-written: Kafka's LogLoader does this with a recovery-point checkpoint; one marker
is enough here, since only the active segment is ever written without an fsync after.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyralog.log.errors import StorageError
from pyralog.log.fileio import fsync_dir
from pyralog.log.segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, Segment

CLEAN_MARKER = ".clean"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What opening a partition found and did; `eventful` if the operator should know."""

    partition: str
    clean: bool
    truncated_bytes: int = 0
    recovered: tuple[str, ...] = ()
    rebuilt_indexes: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    gaps: tuple[str, ...] = ()

    @property
    def eventful(self) -> bool:
        return bool(self.truncated_bytes or self.rebuilt_indexes or self.removed or self.gaps)

    def __str__(self) -> str:
        parts = ["closed cleanly" if self.clean else "not closed cleanly"]
        if self.recovered:
            parts.append(f"checked every batch of {', '.join(self.recovered)}")
        if self.truncated_bytes:
            parts.append(f"cut {self.truncated_bytes} bytes of torn or damaged batches")
        parts += [f"rebuilt the index of {r}" for r in self.rebuilt_indexes]
        parts += [f"removed {r}" for r in self.removed]
        parts += [f"offsets {g} are missing" for g in self.gaps]
        return f"{self.partition}: {'; '.join(parts)}"


def open_segments(
    directory: Path, name: str, *, index_interval_bytes: int, now_ms: int
) -> tuple[list[Segment], RecoveryReport]:
    """The directory's segments in offset order, opened and recovered as needed.

    OSError or StorageError leave nothing open. The list is empty for a new directory.
    """
    directory.mkdir(exist_ok=True)
    marker = directory / CLEAN_MARKER
    clean = marker.exists()
    if clean:
        # Gone for good before anything is written, or a later crash could look clean.
        marker.unlink()
        fsync_dir(directory)
    bases, removed = _list(directory)
    clean = clean or not bases  # a new directory has nothing to recover
    segments: list[Segment] = []
    gaps: list[str] = []
    try:
        for i, base in enumerate(bases):
            last = i == len(bases) - 1
            segment = Segment.open(
                directory,
                base,
                index_interval_bytes=index_interval_bytes,
                now_ms=now_ms,
                recover=last and not clean,
            )
            if segment.size == 0 and not last:
                segment.delete()
                removed.append(f"empty segment {segment.path.name}")
                continue
            if segments:
                previous = segments[-1].next_offset
                if previous > base:
                    segment.close()
                    raise StorageError(
                        f"{name}: {segments[-1].path.name} ends at offset {previous}, past "
                        f"the start of {segment.path.name}: overlapping segments"
                    )
                if previous < base:
                    gaps.append(f"{previous}..{base - 1}")
            segments.append(segment)
    except BaseException:
        for segment in segments:
            segment.close()
        raise
    report = RecoveryReport(
        partition=name,
        clean=clean,
        truncated_bytes=sum(s.truncated_bytes for s in segments),
        recovered=tuple(s.path.name for s in segments if s.recovered),
        rebuilt_indexes=tuple(
            f"{s.path.name}: {s.index_problem}" for s in segments if s.index_problem
        ),
        removed=tuple(removed),
        gaps=tuple(gaps),
    )
    return segments, report


def mark_clean(directory: Path) -> None:
    """Leave the marker that tells the next open() everything was fsynced."""
    fd = os.open(directory / CLEAN_MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)


def _list(directory: Path) -> tuple[list[int], list[str]]:
    """Base offsets of the .log files; index files whose log is gone are removed."""
    names = os.listdir(directory)
    stems = {n[: -len(LOG_SUFFIX)] for n in names if n.endswith(LOG_SUFFIX)}
    stems = {s for s in stems if len(s) == 20 and s.isdigit()}
    removed = []
    for name in names:
        stem, dot, suffix = name.partition(".")
        if dot + suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX) and stem not in stems:
            os.unlink(directory / name)
            removed.append(name)
    return sorted(int(s) for s in stems), removed
