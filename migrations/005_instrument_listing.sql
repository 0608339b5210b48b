-- What the instruments sync stores beyond 001's columns: whether the venue
-- trades the instrument now (Binance status TRADING, Polygon active), and
-- Polygon's name, market and type. tick_size / lot_size stay numeric: exact.
ALTER TABLE instruments
    ADD COLUMN active boolean,
    ADD COLUMN name   text,
    ADD COLUMN market text,
    ADD COLUMN type   text;
