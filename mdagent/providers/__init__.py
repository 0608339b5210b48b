"""Provider adapters: a sans-IO parser and an I/O client per provider."""
