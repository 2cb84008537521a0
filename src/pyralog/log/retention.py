"""Which old segments retention deletes: Kafka's delete policy, as a pure function.

Only a prefix of the log can go (log_start_offset moves forward), never the active
segment, and never a segment holding offsets at or past the high watermark (a consumer
must be able to read what replication has committed). A segment goes if either

- retention.ms >= 0 and its newest batch (max_timestamp; the file's mtime if it has no
  timestamps) is older than that, or
- retention.bytes >= 0 and the segments after it still hold at least retention.bytes,
  as Kafka: the log keeps at least retention.bytes, rather than at most.

Hand-written: a dozen lines of policy, kept apart from the file handling so it reads
(and is tested) as the rule it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyralog.log.segment import Segment
from pyralog.log.topic_config import TopicConfig


def deletable(
    segments: Sequence[Segment], config: TopicConfig, now_ms: int, high_watermark: int
) -> int:
    """How many segments from the front retention deletes now."""
    remaining = sum(s.size for s in segments)
    count = 0
    for segment in segments[:-1]:
        if segment.next_offset > high_watermark:
            break
        newest = segment.max_timestamp if segment.max_timestamp >= 0 else segment.mtime_ms
        expired = config.retention_ms >= 0 and now_ms - newest > config.retention_ms
        oversize = config.retention_bytes >= 0 and (
            remaining - segment.size >= config.retention_bytes
        )
        if not (expired or oversize):
            break
        remaining -= segment.size
        count += 1
    return count
