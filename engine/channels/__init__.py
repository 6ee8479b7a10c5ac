"""Transports behind one small interface: open a session, send, close.

One module per transport (outbox, smtp, sms_http), each with
``open_session(config, root)`` and ``document(message, config, root)`` (the exact bytes it
hands to the provider, made once at render time and kept by the ledger); which module carries a transport is declared
by the channel kinds that use it (engine.channel_kinds, ``Transport.module``),
and ``open_channel`` imports it by that name - so a new kind's transport is
its own module here and nothing else. Adapters return outcomes as values
(``Delivered`` or ``Failed``) instead of raising, so one bad address never
stops a batch; only failing to open a session raises ``ChannelError``
(nothing has been claimed for that channel yet). Must not decide what is
sent: that is the pass's (engine.run).
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from engine import channel_kinds
from engine.model import ChannelConfig
from engine.channels.base import ChannelSession, Delivered, Failed, OutgoingMessage, Outcome


def _module(config: ChannelConfig):
    transport = channel_kinds.transport(config.transport)
    if transport is None:  # pragma: no cover - engine.yaml's schema lists the transports
        raise ValueError(f"unknown transport {config.transport}")
    return importlib.import_module(transport.module)


def open_channel(config: ChannelConfig, root: Path) -> ChannelSession:
    return _module(config).open_session(config, root)


def with_document(config: ChannelConfig, message: OutgoingMessage, root: Path) -> OutgoingMessage:
    """``message`` with its document: the exact bytes the channel's transport hands to the provider
    (the transport module's ``document(message, config, root)``; ``root`` is the project folder a
    setting's relative path is under), which the ledger keeps and every attempt sends. A
    ``DocumentProblem`` when the message cannot be made into one (final for that message)."""
    return replace(message, document=_module(config).document(message, config, root))


__all__ = ["ChannelSession", "Delivered", "Failed", "OutgoingMessage", "Outcome", "open_channel", "with_document"]
