"""Provider events: SES through SNS, SendGrid and the HTTP SMS provider's receipts, against the running service.

Every request goes over a real HTTP connection to ``Service`` (waitress), signed with keys generated here:
an RSA key and a self-signed certificate served by a loopback certificate server (the only http host
``responses.ses.certificate_urls`` may name), an ECDSA P-256 key for SendGrid, an HMAC secret for the SMS
receipts. The ledger is a real SQLite file holding the messages the events name, written through the
ledger's own API with the content the pass stores. What is asserted is what the ledger holds afterwards
(events, suppressions) and what the service logged.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from conftest import copy_project, database_url, load_history
from engine import channel_kinds, logs
from engine.channels.base import OutgoingMessage
from engine.clock import FixedClock, format_instant, parse_instant
from engine.run.dispatch import serialize
from engine.service import signatures
from engine.service.loop import Service
from engine.service.signatures import Refused, UrlPattern, hmac_signature, sns_canonical
from engine.state.ledger import Record
from servers import free_port

NOW = parse_instant("2025-01-10T12:00:00Z")
SECRET = "0f3c9a7e51d2b8463a9d0c7e5f1b2a84"
SMS_SECRET = "7d1e0c5b9a8f4e3d2c1b0a9f8e7d6c5b4a3f2e1d"
OLD_SMS_SECRET = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
TOPIC = "arn:aws:sns:eu-central-1:123456789012:ses-events"
EMAIL_KEY, SMS_KEY, OTHER_EMAIL_KEY = "welcome:mail:1:1", "welcome:text:2:2", "welcome:mail:3:3"
ADDRESSES = {EMAIL_KEY: "Anna.Kunde@beanandbrew.de", SMS_KEY: "+4917012345678", OTHER_EMAIL_KEY: "bert@beanandbrew.de"}
CHANNELS = {EMAIL_KEY: "email", SMS_KEY: "sms", OTHER_EMAIL_KEY: "email"}


# --- keys and the loopback certificate server ---------------------------------------------------------------------


def certificate(key: rsa.RSAPrivateKey, not_before: datetime, not_after: datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.eu-central-1.amazonaws.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


class CertificateServer:
    """Serves PEM files and a subscription confirmation URL on loopback; records every path asked for."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                body = server.files.get(self.path.split("?")[0])
                if self.path.startswith("/confirm?"):
                    body = b"<ConfirmSubscriptionResponse/>"
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Keys:
    def __init__(self, certs: CertificateServer):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certs.files["/SimpleNotificationService-test.pem"] = certificate(
            self.rsa, NOW - timedelta(days=30), NOW + timedelta(days=300))
        certs.files["/SimpleNotificationService-expired.pem"] = certificate(
            self.rsa, NOW - timedelta(days=300), NOW - timedelta(days=1))
        self.cert_url = certs.base + "/SimpleNotificationService-test.pem"
        self.ecdsa = ec.generate_private_key(ec.SECP256R1())
        self.other_ecdsa = ec.generate_private_key(ec.SECP256R1())

    @staticmethod
    def public_der(key) -> str:
        return base64.b64encode(key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


# --- the service ----------------------------------------------------------------------------------------------------


def stored(key: str) -> str:
    """The content the pass stores with a ledger row (engine.run.dispatch.serialize)."""
    return serialize(OutgoingMessage(key=key, kind=CHANNELS[key], to=ADDRESSES[key], sender="Shop <shop@beanandbrew.de>",
                                     parts={"subject": "Hi", "text": "Hello"}))


@pytest.fixture
def service(tmp_path, monkeypatch, request):
    """The service over a small shop (SQLite unless the test asks for another backend), the ledger holding
    the three messages of ADDRESSES, sent an hour ago."""
    certs = CertificateServer()
    keys = Keys(certs)
    root = copy_project(tmp_path / "project")
    url = database_url(getattr(request, "param", "sqlite"), tmp_path)
    load_history(url, customers=[{"customer_id": i, "email": f"c{i}@beanandbrew.de", "created_at": NOW}
                                 for i in (1, 2, 3)])
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    monkeypatch.setenv("ENGINE_CODE_SECRET", SECRET)
    monkeypatch.setenv("TEST_SENDGRID_KEY", Keys.public_der(keys.ecdsa))
    monkeypatch.setenv("TEST_SMS_WEBHOOK_SECRET", SMS_SECRET)
    monkeypatch.setenv("TEST_SMS_WEBHOOK_SECRETS_PREVIOUS", OLD_SMS_SECRET)
    with open(root / "engine.yaml", "a") as config:
        config.write(f"""
responses:
  ses:
    topic_arns: [{TOPIC}]
    certificate_urls: ["{certs.base}/"]
  sendgrid:
    public_key: ${{TEST_SENDGRID_KEY}}
  sms_http:
    secret: ${{TEST_SMS_WEBHOOK_SECRET}}
    previous_secrets: ${{TEST_SMS_WEBHOOK_SECRETS_PREVIOUS}}
""")
    svc = Service(root, 3600.0, metrics_port=free_port(), clock=FixedClock(NOW))
    svc.start()
    ledger = svc._reconciler.ledger
    records = [Record(message_key=key, campaign="welcome", step=key.split(":")[1], customer_id=key.split(":")[2],
                      trigger_key=key.split(":")[3], channel=CHANNELS[key], status="claimed") for key in ADDRESSES]
    ledger.write_new(records, NOW - timedelta(hours=1))
    ledger.hand_over([], [(key, stored(key)) for key in ADDRESSES], NOW - timedelta(hours=1))
    ledger.record_outcomes([dataclasses.replace(r, status="sent") for r in records], NOW - timedelta(hours=1))
    stream = io.StringIO()  # from here on: what the webhooks log (the pass's own lines name customers by design)
    logs.configure("info", "json", stream=stream)
    svc.keys, svc.certs, svc.log = keys, certs, stream
    yield svc
    svc.close()
    certs.close()
    logs.configure()


def post(svc: Service, path: str, body: bytes, headers: dict | None = None, method: str = "POST") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{svc.server.port}{path}", data=body if method == "POST" else None,
                                     headers={"Content-Type": "application/json", **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status_before_body(svc: Service, path: str, length: int) -> int:
    """The status answered to a POST announcing a ``length``-byte body of which nothing is sent yet."""
    import socket

    with socket.create_connection(("127.0.0.1", svc.server.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode())
        return int(sock.recv(200).split(b" ", 2)[1])


def events(svc: Service) -> list[tuple]:
    with svc._reconciler.ledger.db.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.text(
            "SELECT event_id, message_key, type, provider, detail FROM engine_events")))


def suppressions(svc: Service) -> list[tuple]:
    with svc._reconciler.ledger.db.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.text("SELECT kind, address, reason FROM engine_suppressions")))


def log_events(svc: Service) -> list[dict]:
    return [json.loads(line) for line in svc.log.getvalue().splitlines()]


def assert_logs_name_nobody(svc: Service) -> None:
    text = svc.log.getvalue().lower()
    for key, address in ADDRESSES.items():
        assert address.lower() not in text and key not in text


# --- SES through SNS ------------------------------------------------------------------------------------------------


def ses_bounce(key: str | None, bounce_type: str = "Permanent", kind: str = "Bounce") -> dict:
    mail = {"messageId": "0102018d-ses-id", "timestamp": "2025-01-10T11:00:00.000Z",
            "destination": [ADDRESSES.get(key or "", "x@y.de")],
            "headers": [{"name": "Message-ID", "value": "<abc@beanandbrew.de>"}]
            + ([{"name": "X-Engine-Message-Key", "value": key}] if key else [])}
    if kind == "Bounce":
        return {"notificationType": "Bounce", "mail": mail, "bounce": {
            "bounceType": bounce_type, "bounceSubType": "General", "timestamp": "2025-01-10T11:58:00.000Z",
            "bouncedRecipients": [{"emailAddress": ADDRESSES.get(key or "", "x@y.de")}], "feedbackId": "fb-1"}}
    if kind == "Complaint":
        return {"notificationType": "Complaint", "mail": mail, "complaint": {
            "complaintFeedbackType": "abuse", "timestamp": "2025-01-10T11:59:00.000Z",
            "complainedRecipients": [{"emailAddress": ADDRESSES.get(key or "", "x@y.de")}], "feedbackId": "fb-2"}}
    return {"eventType": kind, "mail": mail, "delivery": {"timestamp": "2025-01-10T11:01:00.000Z"}}


def sns(svc: Service, content: dict | None, message_id: str, *, version: str = "2", key=None, cert_url=None,
        timestamp: datetime = NOW - timedelta(seconds=30), topic: str = TOPIC, kind: str = "Notification",
        extra: dict | None = None) -> dict:
    message = {"Type": kind, "MessageId": message_id, "TopicArn": topic,
               "Message": json.dumps(content) if content is not None else "You have chosen to subscribe ...",
               "Timestamp": format_instant(timestamp).replace("Z", ".000Z"), "SignatureVersion": version,
               "SigningCertURL": cert_url or svc.keys.cert_url, **(extra or {})}
    if kind == "Notification":
        message["Subject"] = "Amazon SES Email Event Notification"
    algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
    signature = (key or svc.keys.rsa).sign(sns_canonical(message), padding.PKCS1v15(), algorithm)
    message["Signature"] = base64.b64encode(signature).decode()
    return message


def send_sns(svc: Service, message: dict) -> tuple[int, str]:
    return post(svc, "/webhooks/ses", json.dumps(message).encode(), {"x-amz-sns-message-type": message["Type"]})


def test_ses_events_are_recorded_once_and_a_hard_bounce_or_complaint_suppresses_the_sent_address(service):
    assert send_sns(service, sns(service, ses_bounce(EMAIL_KEY), "sns-1"))[0] == 200
    assert send_sns(service, sns(service, ses_bounce(OTHER_EMAIL_KEY, "Transient"), "sns-2", version="1"))[0] == 200
    assert send_sns(service, sns(service, ses_bounce(OTHER_EMAIL_KEY, kind="Complaint"), "sns-3"))[0] == 200
    assert send_sns(service, sns(service, ses_bounce(OTHER_EMAIL_KEY, kind="Delivery"), "sns-4"))[0] == 200
    assert events(service) == [
        ("ses:sns-1", EMAIL_KEY, "bounce", "ses", "Permanent General"),
        ("ses:sns-2", OTHER_EMAIL_KEY, "soft_bounce", "ses", "Transient General"),
        ("ses:sns-3", OTHER_EMAIL_KEY, "complaint", "ses", "abuse"),
        ("ses:sns-4", OTHER_EMAIL_KEY, "delivered", "ses", None)]
    email = channel_kinds.kind(service._reconciler.config.channels["email"].kind)
    assert suppressions(service) == sorted([(email.name, email.suppression_key(ADDRESSES[EMAIL_KEY]), "bounced"),
                                            (email.name, email.suppression_key(ADDRESSES[OTHER_EMAIL_KEY]), "complaint")])
    with service._reconciler.ledger.db.engine.connect() as conn:
        occurred = conn.execute(sa.text("SELECT occurred_at FROM engine_events WHERE event_id = 'ses:sns-1'")).scalar()
    assert str(occurred).startswith("2025-01-10 11:58:00")  # when SES says it bounced

    # the same notification again (SNS retries until it gets a 2xx): nothing new
    before = (events(service), suppressions(service))
    status, text = send_sns(service, sns(service, ses_bounce(EMAIL_KEY), "sns-1"))
    assert status == 200 and json.loads(text) == {"recorded": 0, "duplicates": 1, "unknown": 0}
    assert (events(service), suppressions(service)) == before
    # SNS signs with few certificates: fetched once
    assert service.certs.requests.count("/SimpleNotificationService-test.pem") == 1
    assert_logs_name_nobody(service)


def test_ses_refuses_what_sns_did_not_sign_and_records_nothing(service):
    good = sns(service, ses_bounce(EMAIL_KEY), "sns-9")
    unsigned = {k: v for k, v in good.items() if k != "Signature"}
    tampered = {**good, "Message": json.dumps(ses_bounce(OTHER_EMAIL_KEY))}
    cases = {
        "unsigned": (unsigned, 401),
        "signed by another key": (sns(service, ses_bounce(EMAIL_KEY), "sns-9", key=service.keys.other_rsa), 403),
        "tampered": (tampered, 403),
        "tampered topic": ({**good, "TopicArn": TOPIC + "-other"}, 403),
        "an unconfigured topic": (sns(service, ses_bounce(EMAIL_KEY), "sns-9", topic=TOPIC + "-other"), 403),
        "replayed after the tolerance": (sns(service, ses_bounce(EMAIL_KEY), "sns-9",
                                              timestamp=NOW - timedelta(minutes=6)), 403),
        "dated in the future": (sns(service, ses_bounce(EMAIL_KEY), "sns-9", timestamp=NOW + timedelta(minutes=6)), 403),
        "a certificate from a host not allowed": (sns(service, ses_bounce(EMAIL_KEY), "sns-9",
                                                      cert_url="https://sns.eu-central-1.evil.de/c.pem"), 403),
        "a certificate URL that is no .pem": (sns(service, ses_bounce(EMAIL_KEY), "sns-9",
                                                  cert_url=service.certs.base + "/cert.txt"), 403),
        "an expired certificate": (sns(service, ses_bounce(EMAIL_KEY), "sns-9",
                                       cert_url=service.certs.base + "/SimpleNotificationService-expired.pem"), 403),
        "an unknown signature version": ({**good, "SignatureVersion": "3"}, 400),
    }
    for what, (message, expected) in cases.items():
        assert send_sns(service, message)[0] == expected, what
    assert post(service, "/webhooks/ses", b"{not json")[0] == 400
    assert post(service, "/webhooks/ses", b"[1, 2]")[0] == 400
    assert post(service, "/webhooks/ses", b"x" * (100 * 1024))[0] == 400  # within SES's limit: read, not JSON
    assert status_before_body(service, "/webhooks/ses", 256 * 1024 + 1) == 413
    assert status_before_body(service, "/unsubscribe?c=1", 100 * 1024) == 413  # the built-in endpoints keep 16 KiB
    assert post(service, "/webhooks/ses", b"", method="GET")[0] == 405
    # signed, fresh, of a configured topic, but naming no message of this ledger: 200, nothing recorded
    status, text = send_sns(service, sns(service, ses_bounce("welcome:mail:999:999"), "sns-10"))
    assert status == 200 and json.loads(text)["unknown"] == 1
    status, text = send_sns(service, sns(service, ses_bounce(None), "sns-11"))  # headers not included
    assert status == 200 and json.loads(text)["unknown"] == 1
    assert events(service) == [] and suppressions(service) == []
    assert set(service.certs.requests) == {"/SimpleNotificationService-test.pem",  # nothing else was fetched
                                           "/SimpleNotificationService-expired.pem"}
    refused = [e for e in log_events(service) if e["event"] == "webhook.refused"]
    assert len(refused) == len(cases) + 3 and {e["status"] for e in refused} == {400, 401, 403}
    assert_logs_name_nobody(service)


def test_a_signed_subscription_confirmation_is_confirmed_at_an_allowed_host_only(service):
    confirm = service.certs.base + "/confirm?Action=ConfirmSubscription&Token=t0k"
    message = sns(service, None, "sns-sub", kind="SubscriptionConfirmation", extra={"Token": "t0k", "SubscribeURL": confirm})
    assert send_sns(service, message)[0] == 200
    assert "/confirm?Action=ConfirmSubscription&Token=t0k" in service.certs.requests
    elsewhere = sns(service, None, "sns-sub2", kind="SubscriptionConfirmation",
                    extra={"Token": "t0k", "SubscribeURL": "https://attacker.example/confirm?x=1"})
    assert send_sns(service, elsewhere)[0] == 200  # noted for the operator, nothing fetched
    forged = {**message, "SubscribeURL": service.certs.base + "/confirm?Action=Other"}
    assert send_sns(service, forged)[0] == 403
    assert [p for p in service.certs.requests if p.startswith("/confirm")] == ["/confirm?Action=ConfirmSubscription&Token=t0k"]


# --- SendGrid -------------------------------------------------------------------------------------------------------


def sendgrid(svc: Service, batch: list, *, key=None, timestamp: datetime = NOW - timedelta(seconds=5),
             body: bytes | None = None) -> tuple[int, str]:
    payload = json.dumps(batch).encode() if body is None else body
    stamp = str(int(timestamp.timestamp()))
    signature = (key or svc.keys.ecdsa).sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    return post(svc, "/webhooks/sendgrid", payload, {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp})


def sg_event(event_id: str, event: str, key: str, **extra) -> dict:
    return {"email": ADDRESSES.get(key, "x@y.de"), "timestamp": int(NOW.timestamp()) - 60, "event": event,
            "sg_event_id": event_id, "sg_message_id": "sg-msg", "engine_message_key": key, **extra}


def test_sendgrid_events_are_verified_recorded_once_and_suppress_on_hard_bounce_and_spam_report(service):
    batch = [sg_event("e1", "delivered", EMAIL_KEY), sg_event("e2", "bounce", EMAIL_KEY, type="blocked"),
             sg_event("e3", "bounce", OTHER_EMAIL_KEY, type="bounce", bounce_classification="Invalid Address"),
             sg_event("e4", "spamreport", EMAIL_KEY), sg_event("e5", "open", EMAIL_KEY),
             sg_event("e6", "delivered", "welcome:mail:404:404"), sg_event("e7", "deferred", EMAIL_KEY)]
    status, text = sendgrid(service, batch)
    assert status == 200 and json.loads(text) == {"recorded": 4, "duplicates": 0, "unknown": 1}
    assert [(e[0], e[2]) for e in events(service)] == [
        ("sendgrid:e1", "delivered"), ("sendgrid:e2", "soft_bounce"), ("sendgrid:e3", "bounce"), ("sendgrid:e4", "complaint")]
    email = channel_kinds.kind(service._reconciler.config.channels["email"].kind)
    assert suppressions(service) == sorted([(email.name, email.suppression_key(ADDRESSES[EMAIL_KEY]), "complaint"),
                                            (email.name, email.suppression_key(ADDRESSES[OTHER_EMAIL_KEY]), "bounced")])
    before = events(service)
    assert sendgrid(service, batch)[0] == 200 and events(service) == before  # a replay inside the tolerance

    one = [sg_event("e8", "delivered", OTHER_EMAIL_KEY)]
    payload = json.dumps(one).encode()
    assert post(service, "/webhooks/sendgrid", payload)[0] == 401  # unsigned
    assert sendgrid(service, one, key=service.keys.other_ecdsa)[0] == 403
    assert sendgrid(service, one, timestamp=NOW - timedelta(minutes=10))[0] == 403
    stamp = str(int(NOW.timestamp()))
    signature = base64.b64encode(service.keys.ecdsa.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))).decode()
    tampered = payload.replace(b"delivered", b"bounce")
    assert post(service, "/webhooks/sendgrid", tampered, {"X-Twilio-Email-Event-Webhook-Signature": signature,
                                                          "X-Twilio-Email-Event-Webhook-Timestamp": stamp})[0] == 403
    assert post(service, "/webhooks/sendgrid", payload, {"X-Twilio-Email-Event-Webhook-Signature": signature,
                                                         "X-Twilio-Email-Event-Webhook-Timestamp": str(int(stamp) + 1)})[0] == 403
    assert sendgrid(service, [], body=b"[{broken")[0] == 400  # signed, but no JSON
    assert sendgrid(service, [], body=b'{"event": "delivered"}')[0] == 400
    assert events(service) == before
    assert_logs_name_nobody(service)


# --- SMS delivery receipts -----------------------------------------------------------------------------------------


def sms(svc: Service, receipt: dict, *, secret: str = SMS_SECRET, timestamp: datetime = NOW) -> tuple[int, str]:
    body = json.dumps(receipt).encode()
    stamp = str(int(timestamp.timestamp()))
    return post(svc, "/webhooks/sms", body, {"X-Engine-Timestamp": stamp,
                                              "X-Engine-Signature": hmac_signature(secret.encode(), stamp, body)})


def test_sms_receipts_are_verified_and_recorded_once(service):
    assert sms(service, {"reference": SMS_KEY, "status": "delivered", "event_id": "dlr-1"})[0] == 200
    assert sms(service, {"reference": SMS_KEY, "status": "failed", "event_id": "dlr-2", "error": "EC_ABSENT"},
               secret=OLD_SMS_SECRET)[0] == 200  # signed with the secret being rotated out
    assert sms(service, {"reference": SMS_KEY, "status": "accepted", "event_id": "dlr-3"})[0] == 200  # not an outcome
    assert events(service) == [("sms_http:dlr-1", SMS_KEY, "delivered", "sms_http", "delivered"),
                               ("sms_http:dlr-2", SMS_KEY, "undelivered", "sms_http", "failed EC_ABSENT")]
    assert suppressions(service) == []  # an undelivered SMS is not a hard bounce
    before = events(service)
    assert sms(service, {"reference": SMS_KEY, "status": "delivered", "event_id": "dlr-1"})[0] == 200  # replay
    receipt = {"reference": SMS_KEY, "status": "delivered", "event_id": "dlr-4"}
    body = json.dumps(receipt).encode()
    stamp = str(int(NOW.timestamp()))
    assert post(service, "/webhooks/sms", body)[0] == 401
    assert sms(service, receipt, secret="f" * 40)[0] == 403
    assert post(service, "/webhooks/sms", body.replace(b"delivered", b"rejected"), {
        "X-Engine-Timestamp": stamp, "X-Engine-Signature": hmac_signature(SMS_SECRET.encode(), stamp, body)})[0] == 403
    assert sms(service, receipt, timestamp=NOW - timedelta(minutes=5, seconds=1))[0] == 403
    assert post(service, "/webhooks/sms", body, {"X-Engine-Timestamp": "yesterday",
                                                  "X-Engine-Signature": hmac_signature(SMS_SECRET.encode(), "yesterday", body)})[0] == 400
    assert sms(service, {"status": "delivered"})[0] == 400
    assert status_before_body(service, "/webhooks/sms", 16 * 1024 + 1) == 413
    assert status_before_body(service, "/webhooks/sendgrid", 1024 * 1024 + 1) == 413
    status, text = sms(service, {"reference": "welcome:text:404:404", "status": "delivered", "event_id": "dlr-5"})
    assert status == 200 and json.loads(text)["unknown"] == 1
    assert events(service) == before
    assert_logs_name_nobody(service)


@pytest.mark.parametrize("service", ["sqlite", "duckdb"], indirect=True)
def test_the_same_event_delivered_twice_at_once_is_recorded_once(service):
    receipt = {"reference": SMS_KEY, "status": "delivered", "event_id": "dlr-race"}
    barrier = threading.Barrier(4)  # as many as the service has workers
    answers: list[tuple[int, str]] = []

    def deliver():
        barrier.wait()
        answers.append(sms(service, receipt))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 4 and all(status in (200, 503) for status, _ in answers), answers
    assert [e[0] for e in events(service)] == ["sms_http:dlr-race"]
    for _ in range(5):  # the provider's retry of an attempt answered 503: a duplicate now
        if all(status == 200 for status, _ in answers):
            break
        answers = [sms(service, receipt)]
    assert answers[-1][0] == 200
    assert [e[0] for e in events(service)] == ["sms_http:dlr-race"]


# --- configuration --------------------------------------------------------------------------------------------------


def test_unconfigured_providers_answer_404_and_settings_are_checked(tmp_path, monkeypatch):
    from engine.errors import ConfigError
    from engine.service.webhooks import provider_settings

    assert provider_settings({}, "ses") is None and provider_settings({"sendgrid": {}}, "sendgrid") is None
    with pytest.raises(ConfigError, match=r"responses\.sendgrid\.public_key is not a public key"):
        provider_settings({"sendgrid": {"public_key": "bm90IGEga2V5"}}, "sendgrid")
    rsa_der = Keys.public_der(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ConfigError, match="is not an ECDSA P-256 public key"):
        provider_settings({"sendgrid": {"public_key": rsa_der}}, "sendgrid")
    with pytest.raises(ConfigError, match=r"responses\.sms_http\.secret: a signing secret needs at least 32"):
        provider_settings({"sms_http": {"secret": "short"}}, "sms_http")
    with pytest.raises(ConfigError, match=r"responses\.ses\.certificate_urls: .*plain http is allowed only for a loopback"):
        provider_settings({"ses": {"topic_arns": [TOPIC], "certificate_urls": ["http://sns.x.amazonaws.com/"]}}, "ses")
    with pytest.raises(ConfigError, match=r"responses\.ses\.tolerance"):
        provider_settings({"ses": {"topic_arns": [TOPIC], "tolerance": "0s"}}, "ses")

    root = copy_project(tmp_path / "project")
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    load_history(url, customers=[])
    monkeypatch.setenv("ENGINE_WAREHOUSE_URL", url)
    monkeypatch.setenv("ENGINE_CODE_SECRET", SECRET)
    config_file = root / "engine.yaml"
    shipped = config_file.read_text()
    svc = Service(root, 3600.0, metrics_port=free_port(), clock=FixedClock(NOW))
    svc.start()
    try:
        for path in ("/webhooks/ses", "/webhooks/sendgrid", "/webhooks/sms"):
            assert post(svc, path, b"{}")[0] == 404, path
        # a reload with a secret that cannot verify is refused, naming the setting; the last project keeps running
        config_file.write_text(shipped + "\nresponses:\n  sms_http: {secret: too-short}\n")
        assert svc.reload_if_changed() is False
        _, detail = svc.readiness()
        # (the readiness detail is masked: a worker whose earlier test remembered a secret spelled "secret" shows ***)
        assert any("responses.sms_http." in e and "needs at least 32 characters" in e for e in detail["config"]["errors"])
    finally:
        svc.close()
    # and the service does not start with it
    monkeypatch.delenv("TEST_SENDGRID_KEY", raising=False)
    config_file.write_text(shipped + "\nresponses:\n  sendgrid: {public_key: \"${TEST_SENDGRID_KEY}\"}\n")
    svc = Service(root, 3600.0, metrics_port=free_port(), clock=FixedClock(NOW))
    with pytest.raises(ConfigError, match="environment variable TEST_SENDGRID_KEY is not set"):
        svc.start()
    svc.close()


def test_sns_host_patterns_match_one_label_per_star():
    pattern = UrlPattern.parse("https://sns.*.amazonaws.com/")
    assert pattern.matches("https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-x.pem")
    for url in ("https://sns.a.b.amazonaws.com/x.pem", "https://sns.eu-central-1.amazonaws.com.evil.de/x.pem",
                "http://sns.eu-central-1.amazonaws.com/x.pem", "https://user@sns.eu-central-1.amazonaws.com/x.pem",
                "https://sns.eu-central-1.amazonaws.com:8443/x.pem", "https://sns..amazonaws.com/x.pem", "not a url"):
        assert not pattern.matches(url), url
    for text in ("https://*.com/", "https://sns.*/", "ftp://sns.x.amazonaws.com/", "https://sns.x.amazonaws.com/path"):
        with pytest.raises(ValueError):
            UrlPattern.parse(text)
    with pytest.raises(Refused) as refused:
        sns_canonical({"Type": "Notification", "MessageId": "m"})
    assert refused.value.status == 400
    assert signatures.unix_time("1736510400") == datetime(2025, 1, 10, 12, tzinfo=timezone.utc)


def test_an_smtp_channel_on_sendgrid_names_the_ledger_key_in_its_events_header():
    """sendgrid_events: the X-SMTPAPI unique argument SendGrid copies into every event (engine_message_key)."""
    import email
    import email.policy

    from engine.channels import smtp
    from engine.model import ChannelConfig

    message = OutgoingMessage(key="welcome:mail:Jörg 7:1", kind="email", to="jorg@beanandbrew.de",
                              sender="Shop <shop@beanandbrew.de>", parts={"subject": "Hi", "text": "Hello"})
    on = ChannelConfig("email", "email", "smtp", {"host": "smtp.sendgrid.net", "sendgrid_events": True})
    off = ChannelConfig("email", "email", "smtp", {"host": "smtp.sendgrid.net"})
    sent = email.message_from_bytes(smtp.document(message, on), policy=email.policy.default)
    assert json.loads(sent["X-SMTPAPI"]) == {"unique_args": {"engine_message_key": "welcome:mail:Jörg 7:1"}}
    assert "X-SMTPAPI" not in email.message_from_bytes(smtp.document(message, off), policy=email.policy.default)
    assert smtp.document(message, off) == smtp.document(message)  # unchanged without the setting


def test_config_show_lists_the_response_settings_with_secrets_masked(tmp_path):
    from click.testing import CliRunner

    from engine.cli.main import main

    root = copy_project(tmp_path / "project")
    with open(root / "engine.yaml", "a") as config:
        config.write(f"\nresponses:\n  ses:\n    topic_arns: [{TOPIC}]\n  sms_http:\n    secret: ${{SMS_WEBHOOK_SECRET}}\n")
    env = {"ENGINE_CODE_SECRET": SECRET, "SMS_WEBHOOK_SECRET": SMS_SECRET}
    result = CliRunner().invoke(main, ["--project", str(root), "config", "show", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert SMS_SECRET not in result.output and shown["responses.sms_http.secret"]["value"] == "***"
    assert shown["responses.ses.topic_arns[0]"]["value"] == TOPIC
    assert shown["responses.ses.certificate_urls"] == {"value": "https://sns.*.amazonaws.com/", "origin": "default",
                                                       "secret": False}
    assert shown["responses.sendgrid.public_key"]["origin"] == "default: /webhooks/sendgrid answers 404"
    assert shown["responses.sms_http.tolerance"]["value"] == "5m"
