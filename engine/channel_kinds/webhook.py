"""The webhook kind: a signed HTTP POST per message to a system of the shop's own (a CRM, a coupon
service, a chat tool), as the Standard Webhooks specification describes.

A webhook has no customer address: it is addressed by the customer's id (the customers' key, so
every customer has one and no column needs mapping); the receiver looks the customer up itself.
Its template is a set of named blocks, each becoming one string field of the JSON body: ``event``
(required: the body's ``type``, e.g. ``cart.reminder``) and any of ``title``, ``text``, ``url``,
``image_url``, ``coupon``, ``tag``. The body is built and signed by the transport
(engine.channels.webhook_http), never by the template, so no customer value can change its
structure. A receiver's 4xx is final for that message but suppresses nothing (it says nothing
about the customer); machine-to-machine, so no quiet-hours warning. Declarations only.
"""
from __future__ import annotations

from engine.channel_kinds.declaration import CUSTOMER_KEY, FILE_OUTBOX, ChannelKind, Transport

NAME = "webhook"

KIND = ChannelKind(
    name=NAME,
    label=NAME,
    contact_field=CUSTOMER_KEY,
    consent_column=f"{NAME}_consent",
    transports=(Transport("http_post", ("url", "secret"), "engine.channels.webhook_http"), FILE_OUTBOX),
    required_parts=("event",),
    optional_parts=("title", "text", "url", "image_url", "coupon", "tag"),
    html_parts=(),
    template_suffix=f".{NAME}.j2",
    suppress_on_permanent_failure=False,
)
