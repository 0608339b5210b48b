"""Backfill and gap repair over REST: clients, rate budget, job workers, the CLI.

- ``ratelimit``: a venue's request budget, shared by every worker of the process.
- ``rest``: the httpx client (retries, 429/418, errors) under that budget.
- ``history``: what a worker needs from a venue (``History``, ``Page``).
- ``binance``, ``polygon``: the venues' history halves (the only modules that
  know endpoints and call the page parsers).
- ``worker``: claim ``fetch_jobs``, read pages, commit rows with checkpoints.
- ``setup``: the histories for a config.
- ``command``: ``mdagent backfill`` (plan, dry run, progress).
"""
