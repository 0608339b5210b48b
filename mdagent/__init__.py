"""mdagent: a market data recorder that loses nothing silently and stores nothing twice."""

import sys as _sys

__version__ = "0.1.0"


def _import_structlog_without_rich() -> None:
    """Import structlog while ``import rich`` fails; rich stays importable after.

    structlog imports rich (and pygments with it) when it is installed, for
    its console renderer's pretty tracebacks. mdagent installs rich for
    ``mdagent status`` and the backfill's progress bars, so every agent
    process, a parent and each of its workers, paid ~3 MB of private memory
    and 50 modules for it (measured with smaps_rollup after a worker's
    imports: 36 -> 33 MB private dirty). mdagent's log chain formats exceptions
    with ``format_exc_info`` before the renderer (logs.py), so the renderer
    only prints a string and never called rich: the logs are the same.
    """
    if "structlog" in _sys.modules or "rich" in _sys.modules:
        return  # imported already (an embedder, a test runner): nothing to save
    _sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" -> ImportError
    try:
        import structlog  # noqa: F401
    finally:
        if _sys.modules.get("rich", 0) is None:
            del _sys.modules["rich"]


_import_structlog_without_rich()
# httpx imports its command-line client (click, rich and pygments: ~4 MB of
# private memory and 84 modules in a parent of workers, measured as above)
# whenever those are installed. mdagent never runs it: with None here,
# httpx takes its "CLI not installed" path (httpx.main only says so).
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
