"""Binance Spot: the description (``provider``), sans-IO parsing (``sansio``), the
WebSocket client (``io``, the stream half) and REST pages (``history``)."""
