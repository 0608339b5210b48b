"""prepare_batch folds repeats of a natural key (identity, event time in ms) inside a batch."""

from __future__ import annotations

from mdagent.db.prepare import prepare_batch
from mdagent.pipeline.batches import WriteBatch
from mdagent.records import Quote, Trade

MS = 1_000_000
T0 = 1_718_000_000_000 * MS


def _trade(trade_id: str, ts_ns: int, symbol: str = "AAPL") -> Trade:
    return Trade("polygon", symbol, "T", trade_id, 1, ts_ns, "1.5", "2", ts_ns)


def _quote(seq: int | None, ts_ns: int, symbol: str = "AAPL") -> Quote:
    return Quote("polygon", symbol, "Q", seq, ts_ns, "1", "1", "2", "1", ts_ns)


def test_distinct_identities_are_all_kept() -> None:
    batch = WriteBatch(
        trades=[_trade("1", T0), _trade("2", T0), _trade("1", T0, "MSFT")],
        quotes=[_quote(1, T0), _quote(2, T0), _quote(1, T0, "MSFT")],
    )
    p = prepare_batch(batch)
    assert (p.trades.records, p.trade_dups) == (batch.trades, 0)
    assert (p.quotes.records, p.quote_dups) == (batch.quotes, 0)


def test_a_repeated_identity_is_one_key_per_millisecond() -> None:
    trades = [
        _trade("1", T0 + 100),
        _trade("1", T0 + MS),  # same id, next ms: another key
        _trade("1", T0 + 900),  # same id, same ms as the first: a repeat
        _trade("2", T0),
    ]
    quotes = [_quote(7, T0), _quote(7, T0 + 5), _quote(7, T0 + 2 * MS), _quote(None, T0)]
    quotes.append(_quote(None, T0 + 1))
    p = prepare_batch(WriteBatch(trades=trades, quotes=quotes))
    assert (p.trades.records, p.trade_dups) == ([trades[0], trades[1], trades[3]], 1)
    assert (p.quotes.records, p.quote_dups) == ([quotes[0], quotes[2], quotes[3]], 2)


def test_rows_carried_by_the_payload_are_released_and_built_again_on_demand() -> None:
    """A prepared batch waits for its commit without its row tuples (the COPY payload
    carries them); the slow path, which needs the rows, gets the same ones back."""
    from mdagent.db.copy_rows import quote_rows, trade_rows
    from mdagent.db.prepare import prepare_batch
    from mdagent.pipeline.batches import WriteBatch
    from tests.test_copy_writer import quote, trade

    batch = WriteBatch()
    batch.add([trade(1), trade(2), quote(1), quote(2)])
    prepared = prepare_batch(batch)
    for table, build in ((prepared.trades, trade_rows), (prepared.quotes, quote_rows)):
        assert table.payload is not None
        assert table._rows is None  # released
        assert table.rows == build(table.records)
        assert len(table.rows) == 2
    assert not prepared.is_empty()
