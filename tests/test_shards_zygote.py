"""The zygote workers are forked from (shards/zygote.py): only from one thread.

Its whole life under ``mdagent run`` (workers forked from it, exec'd once it
is gone, no process left behind) is in test_shards_process.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from mdagent.shards.zygote import single_threaded


def test_forking_is_refused_while_another_thread_runs() -> None:
    """fork() copies one thread: locks another thread holds stay held in the copy."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not single_threaded()
    finally:
        stop.set()
        thread.join()


def test_a_new_process_with_the_worker_modules_imported_is_single_threaded() -> None:
    """What `mdagent run` is when it forks the zygote: nothing it imports starts a thread."""
    code = (
        "import importlib, mdagent.entry\n"
        "from mdagent.shards.zygote import WORKER_MODULES, single_threaded\n"
        "for name in WORKER_MODULES: importlib.import_module(name)\n"
        "print(single_threaded())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "True"
