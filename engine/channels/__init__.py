"""Channel adapters behind one small interface: open a session, send, close.

``open_channel`` picks the adapter for a configured channel. Adapters return
outcomes as values (``Delivered`` or ``Failed``) instead of raising, so one
bad address never stops a batch; only failing to open a session raises
``ChannelError`` (nothing has been claimed for that channel yet).
"""
from __future__ import annotations

from pathlib import Path

from engine.model import ChannelConfig
from engine.channels.base import ChannelSession, Delivered, Failed, OutgoingMessage, Outcome


def open_channel(config: ChannelConfig, root: Path) -> ChannelSession:
    if config.transport == "file":
        from engine.channels.outbox import FileOutbox
        return FileOutbox(config, root)
    if config.transport == "smtp":
        from engine.channels.smtp import SmtpChannel
        return SmtpChannel(config)
    if config.transport == "http":
        from engine.channels.sms_http import HttpSmsChannel
        return HttpSmsChannel(config)
    raise ValueError(f"unknown transport {config.transport}")  # pragma: no cover - schema forbids it


__all__ = ["ChannelSession", "Delivered", "Failed", "OutgoingMessage", "Outcome", "open_channel"]
