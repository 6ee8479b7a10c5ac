"""Email over SMTP (stdlib smtplib): one connection reused for a whole pass.

Credentials come from the environment through ``${VAR}`` in engine.yaml.
A 4xx answer is a transient failure, a 5xx a permanent one (bounce); the
reconciler records both with the server's words.
"""
from __future__ import annotations

import smtplib
import ssl

from ..config import resolve
from ..errors import ChannelError
from ..model import ChannelConfig
from .base import Delivered, Failed, OutgoingMessage, Outcome


class SmtpChannel:
    def __init__(self, config: ChannelConfig):
        settings = config.settings
        self.name = config.name
        self.host = resolve(str(settings["host"]))
        self.security = str(settings.get("security", "none"))
        default_port = {"ssl": 465, "starttls": 587}.get(self.security, 25)
        self.port = int(resolve(str(settings.get("port", default_port))))
        self.username = resolve(str(settings["username"])) if "username" in settings else None
        self.password = resolve(str(settings["password"])) if "password" in settings else None
        self.timeout = float(resolve(str(settings.get("timeout", 30))))
        self._smtp: smtplib.SMTP | None = None

    def open(self) -> None:
        try:
            if self.security == "ssl":
                self._smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=ssl.create_default_context())
            else:
                self._smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    self._smtp.starttls(context=ssl.create_default_context())
            if self.username:
                self._smtp.login(self.username, self.password or "")
        except (OSError, smtplib.SMTPException) as exc:
            self._smtp = None
            raise ChannelError(
                f"channel '{self.name}': cannot connect to SMTP server {self.host}:{self.port}: {exc}; "
                "check host, port and security in engine.yaml and that the server is running"
            ) from None

    def send(self, message: OutgoingMessage) -> Outcome:
        # ASCII addresses (the usual case): the bytes send_message would send, built without the
        # email package's header objects; otherwise send_message, which negotiates SMTPUTF8
        plain = (message.sender + message.to).isascii()
        data = message.to_bytes("\r\n") if plain else message.to_email()
        try:
            if self._smtp is None:
                self.open()
            assert self._smtp is not None
            if isinstance(data, bytes):
                refused = self._smtp.sendmail(message.sender, [message.to], data)
            else:
                refused = self._smtp.send_message(data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return Failed(detail=f"{code} {text.decode(errors='replace')}", permanent=code >= 500)
        except smtplib.SMTPResponseException as exc:
            return Failed(detail=f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}", permanent=exc.smtp_code >= 500)
        except (OSError, smtplib.SMTPException, ChannelError) as exc:
            self._smtp = None  # reconnect for the next message
            return Failed(detail=f"connection error: {exc}")
        if refused:
            return Failed(detail=str(refused), permanent=True)
        return Delivered(provider_id=message.message_id(), detail="250 accepted")

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._smtp = None
