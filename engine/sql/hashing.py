"""The stable hash of a text in SQL: ``decide.hash32`` (first 4 bytes of SHA-256 of the UTF-8, big-endian)
computed by the warehouse, so A/B buckets and replica shards are decided in the due query with the very
assignment Python makes (no running campaign reshuffles, no replica takes another's customers).

Owns: the expression of that hash in a dialect (from the dialect's ``hash32_sql``, engine.dialects, parsed
once by sqlglot) and of the bucket of a customer (``prefix || customer id``, modulo N). A dialect without
``hash32_sql`` computes nothing here (``hashes_in_sql`` is False): Python decides per row, as before.
Must not: name a dialect (dialects.py does), execute anything, or decide which rows use it (due.py).
"""
from __future__ import annotations

import functools

import sqlglot
from sqlglot import exp

from engine.dialects import dialect_named

#: the column name standing for the hashed text in every ``Dialect.hash32_sql``
HASHED_TEXT = "hashed_text"
#: False: no dialect computes the hash, Python does per row, as before (benchmarks/run.py's switch)
IN_SQL = True


def hashes_in_sql(dialect: str) -> bool:
    """Whether ``dialect``'s SQL computes ``decide.hash32`` (else Python does, per row)."""
    return IN_SQL and dialect_named(dialect).hash32_sql is not None


@functools.lru_cache(maxsize=None)
def _template(dialect: str) -> exp.Expression:
    sql = dialect_named(dialect).hash32_sql
    if sql is None:
        raise ValueError(f"dialect {dialect} has no hash32_sql: ask hashes_in_sql first")
    return sqlglot.parse_one(sql, read=dialect)


def hash32(value: exp.Expression, dialect: str) -> exp.Expression:
    """``decide.hash32`` of the text ``value`` in ``dialect`` (a non-negative integer below 2**32)."""
    def fill(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and node.name == HASHED_TEXT and not node.table:
            return value.copy()
        return node
    return _template(dialect).copy().transform(fill)


def hash_bucket(prefix: str, value: exp.Expression, modulo: int, dialect: str) -> exp.Expression:
    """``decide.hash32(prefix + value) % modulo``: ``value`` a text expression (a customer id as text),
    ``prefix`` what Python hashes before it (``decide.bucket_prefix``; empty for a replica's shard)."""
    key = value.copy() if not prefix else exp.DPipe(this=exp.Literal.string(prefix), expression=value.copy(), safe=True)
    return exp.Mod(this=exp.Paren(this=hash32(key, dialect)), expression=exp.Literal.number(modulo))
