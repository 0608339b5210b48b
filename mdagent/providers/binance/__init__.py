"""Binance Spot adapter: sans-IO parsing (``sansio``) and the WebSocket client (``io``)."""
