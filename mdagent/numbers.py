"""The number rules every provider parser shares: one helper per rule.

Two rules, for two kinds of field (see wire-formats.md 1.4, 2.3 and 2.7):

- **Decimals** (prices, sizes, volumes): the exact value the provider sent, in
  any lexical form (``"0.001"``, ``1e-8``, ``1.5E+3``), stored as plain
  notation text (``"0.00000001"``, ``"1500"``). A value no market could send
  is refused with a :class:`NumberError` naming the field: NaN, Infinity, a
  negative number, more than :data:`MAX_SIGNIFICANT_DIGITS` significant
  digits, or a decimal exponent beyond +-:data:`MAX_EXPONENT`. (Without the
  bound, ``1e400`` would become a 400-digit row, or fail a whole COPY batch.)
- **Integers** (ids, sizes Polygon documents as integers, counts, times): any
  JSON *number* literal whose value is whole (``300``, ``300.0``,
  ``2.405117e+06``) becomes that exact ``int``; a fraction or a value outside
  the column's range is a :class:`NumberError` naming the field. A JSON
  string is not a number and is refused.

The typed msgspec decoders of the hot paths accept only plain integers; when
they refuse an input, :func:`relaxed_convert` applies the integer rule to the
generically decoded value (float literals kept as text by
:data:`float_literal_hook`, so nothing is rounded through a float) and
validates it against the same Struct, so strict and relaxed paths share one
definition of "valid".
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal
from typing import Any, Final, TypeVar

import msgspec
import msgspec.inspect as mi

from mdagent.memo import Memo

__all__ = [
    "MAX_EXPONENT",
    "MAX_SIGNIFICANT_DIGITS",
    "FloatLiteral",
    "NumberError",
    "decimal_text",
    "float_literal_hook",
    "is_plain_decimal",
    "number_text",
    "relaxed_convert",
    "relaxed_decoder",
    "whole_int",
]

MAX_SIGNIFICANT_DIGITS: Final = 40
MAX_EXPONENT: Final = 40

# A plain literal of at most 41 characters has at most 40 digits, so its
# significant digits and exponent are inside the bounds: no Decimal needed,
# the common case costs one regex call (the lookahead bounds the length).
# [0-9] not \d (non-ASCII digits), \Z not $ (a trailing newline).
is_plain_decimal: Final = re.compile(r"[0-9]{1,40}\Z|(?=[0-9.]{3,41}\Z)[0-9]+\.[0-9]+\Z").match


_JSON_NUMBER: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z").match


class NumberError(ValueError):
    """A number field holds a value the records cannot store; the message names the field.

    ``field`` is the field's name or path, ``problem`` the rest of the message.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"`{field}` {problem}")
        self.field = field
        self.problem = problem


class FloatLiteral(str):
    """The exact text of a JSON number literal that is not a plain integer (``"2.5e3"``)."""

    __slots__ = ()


def float_literal_hook(literal: str) -> FloatLiteral:
    """``float_hook`` for msgspec decoders: keep non-integer literals as their text."""
    return FloatLiteral(literal)


def decimal_text(value: str | Decimal, field: str) -> str:
    """The plain-notation text of a non-negative decimal, exactly.

    ``value`` is a literal (``"1e-8"``) or a Decimal. Returns e.g.
    ``"0.00000001"``; ``"-0"`` becomes ``"0"``. Raises NumberError naming
    ``field`` for NaN, Infinity, a negative value, more than 40 significant
    digits or an exponent beyond +-40.
    """
    if type(value) is str and is_plain_decimal(value) is not None:
        return value
    if isinstance(value, str):
        # The JSON number grammar only: Decimal() alone would also take " 1",
        # "1_000", "+1", ".5", "NaN" or non-ASCII digits.
        if _JSON_NUMBER(value) is None:
            raise NumberError(field, f"is not a decimal number: {value!r:.50}")
        try:
            value = Decimal(value)
        except decimal.InvalidOperation:
            raise NumberError(field, f"is not a decimal number: {value!r:.50}") from None
    return _checked_plain(value, field)


def _checked_plain(value: Decimal, field: str) -> str:
    if not value.is_finite():
        raise NumberError(field, f"must be a finite number, got {value}")
    if value.is_signed():
        if not value.is_zero():
            raise NumberError(field, f"must be >= 0, got {value:.6E}")
        value = value.copy_abs()  # "-0" would otherwise reach the database
    digits = len(value.as_tuple().digits)
    if digits > MAX_SIGNIFICANT_DIGITS:
        raise NumberError(
            field, f"has {digits} significant digits (at most {MAX_SIGNIFICANT_DIGITS})"
        )
    if not value.is_zero() and abs(value.adjusted()) > MAX_EXPONENT:
        raise NumberError(field, f"has a decimal exponent beyond +-{MAX_EXPONENT}: {value:.6E}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if value.is_zero() and abs(exponent) > MAX_EXPONENT:
        raise NumberError(field, f"has a decimal exponent beyond +-{MAX_EXPONENT}: {value}")
    return format(value, "f")


# Checked literals -> their plain text. Prices sit on a small grid and recur
# all day, so nearly every price costs one dict lookup. Bounded (memo.py): only
# short literals are kept, at most LITERALS_LIMIT of the recently used ones
# (sized in README "Memory over time": the bench's hit rate within 0.2% of an
# unbounded memo, reached within its first minute).
LITERALS_LIMIT: Final = 1 << 13
_LITERALS: Final = Memo[str, str](LITERALS_LIMIT)
_known_literal: Final = _LITERALS.recent.get
_LITERAL_CACHED_LEN: Final = 40
_INT_MAX_PLAIN: Final = 10**MAX_SIGNIFICANT_DIGITS
_JSON_KINDS: Final = {bool: "a boolean", type(None): "null", list: "an array", dict: "an object"}


def number_text(value: Any, field: str) -> str:
    """:func:`decimal_text` of a JSON number decoded untyped (hot path, cached).

    ``value`` is what a decoder with ``float_hook=str`` (or
    :func:`float_literal_hook`) gives for a JSON number: an ``int`` or the
    literal's text; a decimal string is accepted too (the same exact value).
    Anything else (boolean, null, array, object) is a NumberError.
    """
    if type(value) is str:
        text = _known_literal(value)
        return text if text is not None else _new_literal(value, field)
    if type(value) is int:  # exactly int: a JSON true is a bool, refused below
        if 0 <= value < _INT_MAX_PLAIN:
            return str(value)
        return _checked_plain(Decimal(value), field)  # raises the precise reason
    if isinstance(value, str):  # FloatLiteral
        return number_text(str(value), field)
    raise NumberError(field, f"must be a number, got {_JSON_KINDS.get(type(value), 'a value')}")


def _new_literal(literal: str, field: str) -> str:
    text = _LITERALS.recall(literal)
    if text is not None:
        return text
    text = decimal_text(literal, field)
    if len(literal) <= _LITERAL_CACHED_LEN:
        _LITERALS.remember(literal, text)
    return text


def whole_int(value: Any, field: str, ge: int | None = None, le: int | None = None) -> int:
    """The exact int of a JSON number literal whose value is whole.

    ``value`` is an ``int`` or a :class:`FloatLiteral` (``"300.0"``,
    ``"2.405117e+06"``). Raises NumberError naming ``field`` for a fraction, a
    value outside ``[ge, le]``, or anything that is not a JSON number.
    """
    if type(value) is int:
        number = value
    elif isinstance(value, FloatLiteral):
        try:
            exact = Decimal(value)
        except decimal.InvalidOperation:
            raise NumberError(field, f"is not a number: {value!r:.50}") from None
        # Refuse before int(): Decimal("1e400000000") would allocate without bound.
        if not exact.is_finite() or exact.adjusted() > MAX_EXPONENT:
            raise NumberError(field, f"is out of range: {value:.50}")
        if exact != exact.to_integral_value():
            raise NumberError(field, f"must be a whole number, got {value:.50}")
        number = int(exact)
    else:
        kind = "a string" if isinstance(value, str) else _JSON_KINDS.get(type(value), "a value")
        raise NumberError(field, f"must be an integer, got {kind}")
    if (ge is not None and number < ge) or (le is not None and number > le):
        raise NumberError(field, f"is out of range [{ge}, {le}]: {number}")
    return number


# --------------------------------------------------------------------------
# Relaxed conversion: the integer rule applied to a generically decoded value.

_T = TypeVar("_T")


def relaxed_decoder() -> msgspec.json.Decoder[Any]:
    """A generic JSON decoder that keeps float literals as :class:`FloatLiteral` text."""
    return msgspec.json.Decoder(float_hook=float_literal_hook)


def relaxed_convert(value: Any, type_: type[_T] | Any) -> _T:
    """``value`` (from :func:`relaxed_decoder`) validated as ``type_``, whole literals as ints.

    Every integer position of ``type_`` takes :func:`whole_int` of its value
    (bounds from the field's ``msgspec.Meta``); every other float literal is
    handed on as plain ``str``, the form untyped number fields expect.
    Raises NumberError (naming the field path) or msgspec.ValidationError.
    """
    relaxed = _relax(value, mi.type_info(type_), "")
    result: _T = msgspec.convert(relaxed, type_)
    return result


def _relax(value: Any, t: mi.Type, path: str) -> Any:
    if isinstance(t, mi.IntType):
        if isinstance(value, FloatLiteral):
            return whole_int(value, path or "value", t.ge, t.le)
        return value
    if isinstance(t, mi.StrType) and isinstance(value, FloatLiteral):
        # A JSON number where the wire format has a string (Binance prices):
        # a float stands in so that validation reports the JSON type.
        return 0.0
    if isinstance(t, mi.UnionType):
        return _relax_union(value, t, path)
    if isinstance(t, mi.StructType):
        return _relax_struct(value, t, path)
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        if isinstance(value, list):
            return [_relax(v, t.item_type, f"{path}[{i}]") for i, v in enumerate(value)]
        return value
    if isinstance(t, mi.TupleType):
        if isinstance(value, list):
            return [
                _relax(v, item, f"{path}[{i}]")
                for i, (v, item) in enumerate(zip(value, t.item_types, strict=False))
            ] + value[len(t.item_types) :]
        return value
    return _plain(value)


def _relax_union(value: Any, t: mi.UnionType, path: str) -> Any:
    if isinstance(value, FloatLiteral):
        for member in t.types:
            if isinstance(member, mi.IntType):
                return _relax(value, member, path)
        return str(value)
    if isinstance(value, dict):
        structs = [m for m in t.types if isinstance(m, mi.StructType)]
        for member in structs:
            tag_field = member.tag_field
            if tag_field is None or value.get(tag_field) == member.tag:
                return _relax_struct(value, member, path)
    if isinstance(value, list):
        for member in t.types:
            if isinstance(member, mi.ListType | mi.VarTupleType | mi.TupleType):
                return _relax(value, member, path)
            if isinstance(member, mi.StructType) and member.array_like:
                return _relax_struct(value, member, path)
    return _plain(value)


def _relax_struct(value: Any, t: mi.StructType, path: str) -> Any:
    if t.array_like:
        if not isinstance(value, list):
            return value
        out = list(value)
        for index, field in enumerate(t.fields[: len(value)]):
            out[index] = _relax(value[index], field.type, f"{path}[{index}]")
        return out
    if not isinstance(value, dict):
        return value
    out_dict = dict(value)
    for field in t.fields:
        name = field.encode_name
        if name in value:
            out_dict[name] = _relax(value[name], field.type, f"{path}.{name}" if path else name)
    return out_dict


def _plain(value: Any) -> Any:
    """Float literals (anywhere inside) as plain ``str``: untyped fields expect that form."""
    if isinstance(value, FloatLiteral):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
