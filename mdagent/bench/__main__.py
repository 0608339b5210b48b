"""``python -m mdagent.bench``: the same options as ``mdagent bench``."""

from mdagent.bench.report import main

raise SystemExit(main())
