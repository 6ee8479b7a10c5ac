"""One campaign's failure stays that campaign's: the wrapper every per-campaign stage runs in.

Owns the rule (a campaign whose segment entries, query or decisions fail is named with the
reason, and the pass goes on with the others) and the one line that says why. Must not catch
anything but ``Exception`` (an interrupt or a closed generator passes through), decide what a
failed campaign means for the rest of the pass, or log.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import ChannelError, TemplateError, WarehouseError

_QUOTED = re.compile(r"'(?:[^']|'')*'")


def campaign_failure(exc: BaseException) -> str:
    """One line saying why a campaign failed, without the values a database error may quote
    (a customer's email in a conversion error): single-quoted strings become '...'."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if not isinstance(exc, (WarehouseError, TemplateError, ChannelError)):
        first = f"{type(exc).__name__}: {first}"
    return _QUOTED.sub("'...'", first)[:500]


@contextmanager
def isolated(campaign: str, failures: dict[str, str] | None) -> Iterator[None]:
    """Run one campaign's stage: with ``failures`` given, an error is recorded there under the
    campaign's name and swallowed (what the stage did before it stands); without, it propagates."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - one campaign's failure is reported, the others go on
        if failures is None:
            raise
        failures[campaign] = campaign_failure(exc)
