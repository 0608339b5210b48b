-- A quote's conditions are a list, as a trade's are: Polygon REST quotes send
-- a `conditions` array (the WebSocket sends one `c`). The single `condition`
-- column kept only the first element; `conditions integer[]` keeps them all.
-- Existing values move over as one-element arrays.
ALTER TABLE quotes ADD COLUMN conditions integer[];
UPDATE quotes SET conditions = ARRAY[condition] WHERE condition IS NOT NULL;
ALTER TABLE quotes DROP COLUMN condition;
