"""CPU and memory figures of the bench: this process (the agent), the venue, the machine."""

from __future__ import annotations

import os
import resource
import sys
import time

import attrs


@attrs.define
class CpuSample:
    """Cumulative CPU seconds of this process, the venue process and the whole machine."""

    wall: float
    agent_s: float
    venue_s: float | None
    machine_busy_s: float | None

    @classmethod
    def take(cls, venue_pid: int) -> CpuSample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            wall=time.perf_counter(),
            agent_s=usage.ru_utime + usage.ru_stime,
            venue_s=_proc_cpu_s(venue_pid),
            machine_busy_s=_machine_busy_s(),
        )


def _proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3; utime, stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_percent(a: CpuSample, b: CpuSample) -> dict[str, float | None]:
    wall = b.wall - a.wall

    def pct(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None or wall <= 0 else round(100 * (y - x) / wall, 1)

    return {
        "agent_process": pct(a.agent_s, b.agent_s),
        "venue_process": pct(a.venue_s, b.venue_s),
        "machine": pct(a.machine_busy_s, b.machine_busy_s),
    }


def proc_cpu_s(pid: int) -> float | None:
    """Cumulative CPU seconds (user + system) of process ``pid``; None when unreadable."""
    return _proc_cpu_s(pid)


def memory_kb(field: str, pid: int | str = "self") -> int | None:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM), KiB; None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    hwm = memory_kb("VmHWM")
    if hwm is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / (1 << 20) if sys.platform == "darwin" else maxrss / 1024
    return hwm / 1024


def pss_kb(pid: int | str = "self") -> int | None:
    """Proportional set size of process ``pid`` (``Pss`` of ``/proc/<pid>/smaps_rollup``), KiB.

    Its private pages plus each shared page divided by the number of
    processes mapping it: summed over processes, every page counts once.
    None when unreadable (the process is gone, not Linux, Linux < 4.14).
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
