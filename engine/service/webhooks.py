"""Provider events over HTTP: SES (through SNS), SendGrid and the HTTP SMS provider's delivery receipts.

Owns the three POST endpoints (``routes``), what each provider's payload means (delivered, bounce,
soft_bounce, complaint, undelivered) and how it names our message, and recording them: one
``Ledger.record_events`` per request (deduplicated by ``f"{provider}:{the provider's event id}"``, so a
replayed or concurrently delivered event is recorded once) after suppressing the address of a hard bounce
or complaint for every campaign (``Ledger.suppress``; the address is the one the ledger's stored message
was sent to, never one read from the request). Signatures are ``signatures.py``'s business; nothing here
trusts a field of a request before its signature verified.

How an event names our message:
- SES: the ``X-Engine-Message-Key`` header every email carries, in the notification's ``mail.headers``
  (SES includes the original headers when the identity's "Include original headers" is on).
- SendGrid: the custom argument ``engine_message_key`` (``custom_args``/``unique_args``, which SendGrid
  copies into every event of the message).
- SMS: the ``reference`` our request gave the provider (the ledger key), echoed in its receipt.

Answers: 200 for a verified event, also when it names no message of this ledger (recorded nothing,
logged: the provider would retry a non-2xx answer forever) or is of a type we do not record; 400 malformed;
401 unsigned; 403 wrongly signed, tampered, outside the timestamp tolerance, or from an SNS topic not
configured; 404 a provider not configured in engine.yaml (``responses:``); 413 a body over the route's
limit (httpd); 503 the project or the ledger not available (the provider retries). Log lines name the
provider, the status and the reason: never an address, a message key or the body.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

import httpx
from sqlalchemy.exc import SQLAlchemyError

from engine import channel_kinds
from engine.clock import Clock, parse_duration, parse_instant, to_utc
from engine.errors import ConfigError, EngineError
from engine.logs import event
from engine.service.httpd import Answer, Request, Route
from engine.service.signatures import (
    DEFAULT_CERTIFICATE_URLS, DEFAULT_TOLERANCE, FETCH_TIMEOUT, CertificateStore, Refused, UrlPattern, allowed, check_fresh,
    load_ecdsa_key, unix_time, verify_ecdsa, verify_hmac, verify_sns,
)
from engine.spec.config import resolve
from engine.state.events import SUPPRESSING, Event, provider_event_id

#: the endpoints, by provider (the provider's name is also the first part of its events' ids)
PATHS = {"ses": "/webhooks/ses", "sendgrid": "/webhooks/sendgrid", "sms_http": "/webhooks/sms"}
#: body limits: SNS messages are at most 256 KiB; SendGrid posts batches of up to 768 KB; a receipt is small
MAX_BODIES = {"ses": 256 * 1024, "sendgrid": 1024 * 1024, "sms_http": 16 * 1024}
#: the header our message key travels in (engine.channels.base) and the SendGrid custom argument
KEY_HEADER = "x-engine-message-key"
SENDGRID_KEY = "engine_message_key"
SMS_SIGNATURE, SMS_TIMESTAMP = "x-engine-signature", "x-engine-timestamp"
SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"
JSON = "application/json"

# --- settings ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SesSettings:
    topic_arns: frozenset[str]
    certificate_urls: tuple[UrlPattern, ...]
    confirm_subscriptions: bool
    tolerance: timedelta


@dataclass(frozen=True)
class SendgridSettings:
    public_key: Any  # ec.EllipticCurvePublicKey
    tolerance: timedelta


@dataclass(frozen=True)
class SmsSettings:
    secrets: tuple[bytes, ...]
    tolerance: timedelta


def _tolerance(spec: Mapping, where: str) -> timedelta:
    text = str(spec.get("tolerance", DEFAULT_TOLERANCE))
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{where}.tolerance: {exc}") from None
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigError(f"{where}.tolerance: '{text}' is no positive duration; write e.g. 5m")
    return value


def provider_settings(responses: Mapping[str, Any], provider: str):
    """The verified settings of ``provider`` from engine.yaml's ``responses:`` (secrets resolved now), or
    None when it is not configured; ConfigError naming the setting and the fix."""
    spec = responses.get(provider)
    where = f"responses.{provider}"
    if not spec:
        return None
    if provider == "ses":
        arns = frozenset(resolve(str(arn)) for arn in spec.get("topic_arns") or ())
        if not arns:
            return None
        try:
            patterns = tuple(UrlPattern.parse(resolve(str(url)))
                             for url in spec.get("certificate_urls") or DEFAULT_CERTIFICATE_URLS)
        except ValueError as exc:
            raise ConfigError(f"{where}.certificate_urls: {exc}") from None
        return SesSettings(arns, patterns, bool(spec.get("confirm_subscriptions", True)), _tolerance(spec, where))
    if provider == "sendgrid":
        text = resolve(str(spec.get("public_key") or ""))
        if not text:
            return None
        try:
            key = load_ecdsa_key(text)
        except ValueError as exc:
            raise ConfigError(f"{where}.public_key {exc}; copy the verification key of SendGrid's signed event "
                              "webhook (Settings > Mail Settings > Event Webhook)") from None
        return SendgridSettings(key, _tolerance(spec, where))
    secret = resolve(str(spec.get("secret") or ""))
    if not secret:
        return None
    previous = [s.strip() for s in resolve(str(spec.get("previous_secrets") or "")).split(",") if s.strip()]
    if min(len(s) for s in [secret, *previous]) < 32:
        raise ConfigError(f"{where}.secret: a signing secret needs at least 32 characters; "
                          "generate one with `openssl rand -hex 32` and give the same to the SMS provider")
    return SmsSettings(tuple(s.encode("utf-8") for s in [secret, *previous]), _tolerance(spec, where))


def check(config) -> None:
    """ConfigError naming the first ``responses:`` setting that cannot work (a key that is none, a secret too
    short, an unset variable): the service refuses to start with it, or keeps the last project on a reload."""
    for provider in PATHS:
        provider_settings(getattr(config, "responses", None) or {}, provider)


# --- what the providers say --------------------------------------------------------------------------------------


def _detail(*words: object) -> str | None:
    """Short provider vocabulary (a bounce subtype, a status): letters, digits and a few signs, no personal data."""
    text = " ".join(str(w) for w in words if isinstance(w, (str, int)) and str(w))
    text = re.sub(r"[^A-Za-z0-9 ._/-]", "", text)[:80]
    return text or None


def _naive(moment: datetime) -> datetime:
    return to_utc(moment).replace(tzinfo=None)


def _instant(value: object, fallback: datetime) -> datetime:
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _naive(unix_time(str(int(value))))
        if isinstance(value, str):
            return _naive(parse_instant(value))
    except (ValueError, OverflowError, Refused):
        pass
    return _naive(fallback)


def ses_events(sns_message_id: str, published: datetime, content: object) -> list[Event]:
    """An SES notification (``notificationType``) or event-publishing record (``eventType``) as events."""
    if not isinstance(content, dict):
        raise Refused(400, "the notification's Message is not an SES event")
    what = content.get("notificationType") or content.get("eventType")
    mail = content.get("mail") if isinstance(content.get("mail"), dict) else {}
    headers = mail.get("headers") if isinstance(mail.get("headers"), list) else []
    key = next((h.get("value") for h in headers if isinstance(h, dict) and str(h.get("name", "")).lower() == KEY_HEADER
                and isinstance(h.get("value"), str)), None)
    if what == "Bounce":
        bounce = content.get("bounce") if isinstance(content.get("bounce"), dict) else {}
        kind = "bounce" if bounce.get("bounceType") == "Permanent" else "soft_bounce"  # Transient, Undetermined
        detail, at = _detail(bounce.get("bounceType"), bounce.get("bounceSubType")), bounce.get("timestamp")
    elif what == "Complaint":
        complaint = content.get("complaint") if isinstance(content.get("complaint"), dict) else {}
        kind, detail, at = "complaint", _detail(complaint.get("complaintFeedbackType")), complaint.get("timestamp")
    elif what == "Delivery":
        delivery = content.get("delivery") if isinstance(content.get("delivery"), dict) else {}
        kind, detail, at = "delivered", None, delivery.get("timestamp")
    elif what == "Reject":
        kind, detail, at = "undelivered", _detail("Reject"), mail.get("timestamp")
    else:  # Send, Open, Click (the service tracks those itself), DeliveryDelay, Rendering Failure, ...
        return []
    return [Event(event_id=provider_event_id("ses", sns_message_id), message_key=key or "", type=kind,
                  occurred_at=_instant(at, published), provider="ses", detail=detail)]


#: SendGrid's event names -> ours (a bounce event's ``type`` "blocked" is a soft bounce); others are not recorded
SENDGRID_TYPES = {"delivered": "delivered", "bounce": "bounce", "dropped": "undelivered", "spamreport": "complaint"}


def sendgrid_events(batch: object, received: datetime) -> list[Event]:
    if not isinstance(batch, list) or not all(isinstance(item, dict) for item in batch):
        raise Refused(400, "the body is not a JSON array of SendGrid events")
    found = []
    for item in batch:
        kind = SENDGRID_TYPES.get(item["event"]) if isinstance(item.get("event"), str) else None
        provider_id = item.get("sg_event_id")
        if kind is None or not isinstance(provider_id, str) or not provider_id:
            continue
        if kind == "bounce" and item.get("type") == "blocked":
            kind = "soft_bounce"
        key = item.get(SENDGRID_KEY)
        found.append(Event(event_id=provider_event_id("sendgrid", provider_id),
                           message_key=key if isinstance(key, str) else "", type=kind,
                           occurred_at=_instant(item.get("timestamp"), received), provider="sendgrid",
                           detail=_detail(item.get("type") if kind != "undelivered" else "dropped",
                                          item.get("bounce_classification"))))
    return found


#: an SMS receipt's ``status`` -> ours; others (queued, accepted, sent) are not recorded
SMS_STATUSES = {"delivered": "delivered", "undelivered": "undelivered", "failed": "undelivered",
                "rejected": "undelivered", "expired": "undelivered"}


def sms_events(receipt: object, received: datetime) -> list[Event]:
    """A delivery receipt: {"reference": our ledger key, "status", "event_id" or "id", "timestamp"?, "error"?}."""
    if not isinstance(receipt, dict):
        raise Refused(400, "the body is not a JSON object")
    status, reference = receipt.get("status"), receipt.get("reference")
    if not isinstance(status, str) or not isinstance(reference, str):
        raise Refused(400, "a receipt needs a reference and a status")
    kind = SMS_STATUSES.get(status.lower())
    if kind is None:
        return []
    given, provider_message = receipt.get("event_id"), receipt.get("id")
    provider_id = (given if isinstance(given, (str, int)) and given != "" else
                   f"{provider_message}:{status.lower()}" if isinstance(provider_message, (str, int)) and provider_message != ""
                   else f"{reference}:{status.lower()}")
    return [Event(event_id=provider_event_id("sms_http", str(provider_id)), message_key=reference, type=kind,
                  occurred_at=_instant(receipt.get("timestamp"), received), provider="sms_http",
                  detail=_detail(status.lower(), receipt.get("error")))]


# --- the endpoints -------------------------------------------------------------------------------------------------


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None


class Webhooks:
    """The three endpoints over the service's current project (``current()``: its reconciler, or None)."""

    def __init__(self, current: Callable[[], Any], clock: Clock, certificates: CertificateStore | None = None):
        self.current = current
        self.clock = clock
        self.certificates = certificates or CertificateStore()
        self._settings: tuple[object, dict] | None = None  # (the config they were read from, provider -> settings)

    def routes(self) -> dict[str, Route]:
        handlers = {"ses": self.ses, "sendgrid": self.sendgrid, "sms_http": self.sms}
        return {PATHS[name]: Route(self._endpoint(name, handler), methods=("POST",), max_body=MAX_BODIES[name])
                for name, handler in handlers.items()}

    def _settings_of(self, config) -> dict:
        cached = self._settings
        if cached is not None and cached[0] is config:
            return cached[1]
        settings: dict = {}
        for provider in PATHS:
            try:
                settings[provider] = provider_settings(getattr(config, "responses", None) or {}, provider)
            except ConfigError as exc:
                settings[provider] = exc
        self._settings = (config, settings)
        return settings

    def _endpoint(self, provider: str, handler) -> Callable[[Request], Answer]:
        def handle(request: Request) -> Answer:
            reconciler = self.current()
            if reconciler is None:
                return _answer(503, "not ready, try again in a minute")
            settings = self._settings_of(reconciler.config).get(provider)
            if isinstance(settings, ConfigError):
                event("webhook.misconfigured", f"{PATHS[provider]}: {settings}", logging.ERROR, provider=provider)
                return _answer(503, "this endpoint is misconfigured; see the service log")
            if settings is None:
                return _answer(404, f"{provider} events are not configured (engine.yaml responses.{provider})")
            try:
                return handler(request, settings, reconciler)
            except Refused as refused:
                event("webhook.refused", f"Refused a {provider} webhook: {refused.reason}", logging.WARNING,
                      provider=provider, status=refused.status)
                return _answer(refused.status, refused.reason)
            except (EngineError, SQLAlchemyError) as exc:  # the ledger: the provider retries a 503
                first_line = (str(exc).strip().splitlines() or [""])[0] if isinstance(exc, EngineError) else ""
                event("webhook.unavailable", f"Could not record {provider} events: {type(exc).__name__} {first_line}",
                      logging.WARNING, provider=provider)
                return _answer(503, "events cannot be recorded right now, try again later")
        return handle

    # --- providers ---

    def ses(self, request: Request, settings: SesSettings, reconciler) -> Answer:
        now = self.clock.now()
        message = _json(request.body)
        if not isinstance(message, dict):
            raise Refused(400, "the body is not an SNS message")
        if message.get("Signature") is None:
            raise Refused(401, "the SNS message is not signed")
        if not isinstance(message.get("TopicArn"), str) or message["TopicArn"] not in settings.topic_arns:
            raise Refused(403, "the SNS topic is not one of responses.ses.topic_arns")
        verify_sns(message, self.certificates, settings.certificate_urls, now)
        try:
            published = parse_instant(str(message["Timestamp"]))
        except ValueError:
            raise Refused(400, "the SNS Timestamp is not an instant") from None
        check_fresh(published, now, settings.tolerance)
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            return self._confirm(message, settings)
        if kind == "UnsubscribeConfirmation":
            event("webhook.sns", f"SNS topic {message['TopicArn']} unsubscribed this endpoint", logging.WARNING,
                  provider="ses")
            return _answer(200, "noted")
        try:
            content = json.loads(str(message["Message"]))
        except ValueError:
            raise Refused(400, "the notification's Message is not JSON") from None
        return self._record("ses", reconciler, ses_events(str(message["MessageId"]), published, content), now)

    def _confirm(self, message: dict, settings: SesSettings) -> Answer:
        """A verified SubscriptionConfirmation of a configured topic: GET its SubscribeURL on an allowed host."""
        url, topic = message["SubscribeURL"], message["TopicArn"]
        if not settings.confirm_subscriptions or not allowed(url, settings.certificate_urls):
            why = "confirm_subscriptions is off" if not settings.confirm_subscriptions else "its URL is not an allowed host"
            event("webhook.sns", f"SNS asks to confirm the subscription to {topic}; not confirmed ({why}): confirm it "
                  "in the AWS console", logging.WARNING, provider="ses")
            return _answer(200, "noted; confirm the subscription in the AWS console")
        try:
            response = httpx.get(url, timeout=FETCH_TIMEOUT, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise Refused(503, f"could not confirm the subscription ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise Refused(503, f"could not confirm the subscription (HTTP {response.status_code})")
        event("webhook.sns", f"Confirmed the SNS subscription to {topic}", provider="ses")
        return _answer(200, "subscription confirmed")

    def sendgrid(self, request: Request, settings: SendgridSettings, reconciler) -> Answer:
        now = self.clock.now()
        timestamp = request.headers.get(SENDGRID_TIMESTAMP)
        verify_ecdsa(settings.public_key, request.headers.get(SENDGRID_SIGNATURE), timestamp, request.body)
        check_fresh(unix_time(timestamp), now, settings.tolerance)
        return self._record("sendgrid", reconciler, sendgrid_events(_json(request.body), now), now)

    def sms(self, request: Request, settings: SmsSettings, reconciler) -> Answer:
        now = self.clock.now()
        timestamp = request.headers.get(SMS_TIMESTAMP)
        verify_hmac(settings.secrets, request.headers.get(SMS_SIGNATURE), timestamp, request.body)
        check_fresh(unix_time(timestamp), now, settings.tolerance)
        return self._record("sms_http", reconciler, sms_events(_json(request.body), now), now)

    # --- recording ---

    def _record(self, provider: str, reconciler, events: list[Event], now: datetime) -> Answer:
        """Suppress the addresses of hard bounces and complaints, then record the events once."""
        ledger, channels = reconciler.ledger, reconciler.config.channels
        keys = sorted({e.message_key for e in events if e.message_key})
        refs = ledger.message_refs(keys) if keys else {}
        known = [e for e in events if e.message_key in refs]
        for e in known:
            if e.type not in SUPPRESSING:
                continue
            channel = channels.get(refs[e.message_key].channel)
            row = ledger.get(e.message_key)
            try:
                address = json.loads(row["content"])["to"] if row and row.get("content") else None
            except (ValueError, KeyError, TypeError):
                address = None
            if channel is None or not isinstance(address, str):
                event("webhook.unsuppressed", f"A {provider} {e.type} names a message whose channel or address is "
                      "no longer known; the address was not suppressed", logging.WARNING, provider=provider)
                continue
            kind = channel_kinds.kind(channel.kind)
            ledger.suppress(kind.name, kind.suppression_key(address), "bounced" if e.type == "bounce" else "complaint",
                            f"{provider} {e.type}" + (f": {e.detail}" if e.detail else ""), now)
        recorded = ledger.record_events(known, now) if known else []
        unknown = len(events) - len(known)
        counts: dict[str, int] = {}
        for r in recorded:
            counts[r.event.type] = counts.get(r.event.type, 0) + 1
        summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "nothing new"
        event("webhook.recorded", f"{provider}: recorded {summary}; {len(known) - len(recorded)} already recorded, "
              f"{unknown} naming no message of this ledger", logging.WARNING if unknown else logging.INFO,
              provider=provider, recorded=len(recorded), duplicates=len(known) - len(recorded), unknown=unknown)
        return Answer(200, json.dumps({"recorded": len(recorded), "duplicates": len(known) - len(recorded),
                                       "unknown": unknown}).encode() + b"\n", JSON)


def _answer(status: int, text: str) -> Answer:
    return Answer(status, (text + "\n").encode("utf-8"))


def routes(current: Callable[[], Any], clock: Clock, certificates: CertificateStore | None = None) -> dict[str, Route]:
    """The webhook endpoints (path -> Route) over the service's current reconciler."""
    return Webhooks(current, clock, certificates).routes()
