"""The process's file descriptor limit.

systemd (and most shells) start services with a soft limit of 1,024
descriptors and a much higher hard limit; the soft one is only a default
for programs that use select(). mdagent never does, so it raises the soft
limit to the hard one at start (``LimitNOFILE=`` in the unit sets both).
"""

from __future__ import annotations

import resource


def raise_file_limit() -> tuple[int, int]:
    """Set the soft RLIMIT_NOFILE to the hard one; return (soft before, soft now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft  # e.g. above fs.nr_open: keep what we have
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
