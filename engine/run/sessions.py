"""The pass's channel sessions: every adapter built before anything is claimed, each session
opened on first use and reused for the whole pass, all closed at its end.

Owns which channels a pass may need and what happens when one cannot open (the error goes to the
pass report, the channel reads as unavailable). Must not send, claim or record anything.
"""
from __future__ import annotations

from engine.channels import ChannelSession, open_channel
from engine.errors import ChannelError
from engine.model import Campaign, ProjectConfig
from engine.run.messages import PassReport


class ChannelSessions:
    def __init__(self, config: ProjectConfig, campaigns: list[Campaign], report: PassReport):
        """Builds the adapter of every channel ``campaigns`` use: a missing secret fails here, before
        anything is claimed. A channel used only by a recovered message is built when it is needed."""
        self.config = config
        self.report = report
        used = sorted({channel for campaign in campaigns for step in campaign.steps for channel in step.channels})
        self.adapters = {name: open_channel(config.channels[name], config.root) for name in used}
        #: channel -> its open session, or None when it could not open
        self.opened: dict[str, ChannelSession | None] = {}

    def get(self, name: str) -> ChannelSession | None:
        """The open session of channel ``name``, opened on first use; None if it cannot open."""
        if name not in self.opened:
            session = self.adapters.get(name) or open_channel(self.config.channels[name], self.config.root)
            try:
                session.open()
                self.opened[name] = session
            except ChannelError as exc:
                self.report.errors.append(str(exc))
                self.opened[name] = None
        return self.opened[name]

    def close(self) -> None:
        for session in self.opened.values():
            if session is not None:
                session.close()
