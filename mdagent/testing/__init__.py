"""Test doubles for mdagent: loopback fake venues and the small servers they are built on.

- :mod:`mdagent.testing.venue`: ``FakeVenue``, the base class and one API of
  every fake venue (URLs, ground truth, fault switches, counters, serving).
- :mod:`mdagent.testing.kit`: a provider's testing kit (its fake venue and
  its bench profile), found through the provider's description.
- ``mdagent.testing.<provider>/``: that provider's fake (``venue.py``), its
  seeded market generator (``marketgen.py``) and bench profile (``bench.py``).
- :mod:`mdagent.testing.httpserver`: a minimal HTTP/1.1 server (trio + h11).
- :mod:`mdagent.testing.wsserver`: a minimal WebSocket server (trio + wsproto).

Nothing here is imported by the agent itself; it backs the tests,
``mdagent fake-venue`` and ``mdagent bench``.
"""
