"""Log lines from several processes sharing one stderr stay whole lines.

Worker processes ([agent] workers) log to the stderr they share with their
parent (the journal, a file): a line written as two writes (the text, then
its newline) could interleave with another process's line ("{...}{...}\\n\\n"),
which no JSON log reader can parse.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITERS = 3
LINES = 3000

SCRIPT = """
import structlog
from mdagent.logs import configure_logging
configure_logging("info", "json")
log = structlog.get_logger("t")
for i in range({lines}):
    log.info("line", writer={writer}, i=i, pad="x" * 150)
"""


def test_lines_of_processes_sharing_stderr_never_interleave(tmp_path: Path) -> None:
    out = tmp_path / "shared.log"
    with out.open("w") as shared:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT.format(lines=LINES, writer=w)], stderr=shared
            )
            for w in range(WRITERS)
        ]
        for proc in procs:
            assert proc.wait(120) == 0
    lines = out.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # a merged line fails here
    assert len(parsed) == WRITERS * LINES
    for w in range(WRITERS):
        assert [p["i"] for p in parsed if p["writer"] == w] == list(range(LINES))
