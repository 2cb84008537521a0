"""kill -9 in the middle of appends with flush="always": a real child process appends in
a loop and prints each acknowledged offset; after SIGKILL every printed offset must read
back intact and the log must end in whole, valid batches."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from logbatches import numbered, read_all

from processes import stop_process
from pyralog.log.partition import PartitionLog
from pyralog.log.topic_config import TopicConfig

CONFIG = TopicConfig(flush="always", segment_bytes=256 * 1024, index_interval_bytes=1024)

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from logbatches import numbered
    from pyralog.log.partition import PartitionLog
    from pyralog.log.topic_config import TopicConfig

    config = TopicConfig(flush="always", segment_bytes=256 * 1024, index_interval_bytes=1024)
    log = PartitionLog(Path(sys.argv[1]), "k", 0, config)
    log.open()
    while True:
        # Batches of a few KiB, so the kill has writes to land in the middle of.
        result = log.append(numbered(log.log_end_offset, 4, size=1500))
        print(result.last_offset, flush=True)
    """
)


def test_every_acknowledged_offset_survives_kill_9(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    acknowledged: list[int] = []
    try:
        assert proc.stdout is not None
        while len(acknowledged) < 150:
            line = proc.stdout.readline()
            assert line, f"the child stopped early: {proc.stderr.read() if proc.stderr else ''}"
            acknowledged.append(int(line))
        proc.kill()  # SIGKILL, mid-stream
        proc.wait(timeout=10)
        # Lines already in the pipe were acknowledged before the kill too.
        acknowledged += [int(line) for line in proc.stdout.read().split()]
    finally:
        stop_process(proc)
    log = PartitionLog(tmp_path, "k", 0, CONFIG)
    report = log.open()
    try:
        assert not report.clean
        assert log.log_end_offset > acknowledged[-1]
        got = dict(read_all(log))
        for offset in acknowledged:
            assert (got[offset] or b"").startswith(f"r{offset}.".encode())
        # The tail is clean: whole valid batches to the end of every file, nothing more.
        assert sorted(got) == list(range(log.log_end_offset))
        assert sum(h.size for h in log.headers()) == sum(
            p.stat().st_size for p in log.path.glob("*.log")
        )
        end = log.log_end_offset
        assert log.append(numbered(end)).base_offset == end
    finally:
        log.close()
