"""What a channel kind declares: everything the rest of the engine needs to know about it.

A ``ChannelKind`` is pure data (and a few pure functions): which customer
column holds the address and when an address is usable, the consent column,
the unsubscribe scope, the template parts and the file suffix of its
templates, the headers every message carries, whether a step without quiet
hours is worth a warning, how an address is suppressed, and the transports
that carry it. A ``Transport`` names a transport of engine.yaml, the settings
it needs and the module (in engine.channels) whose ``open_session(config,
root)`` opens a session - by name, so these declarations sit below the spec
layer that validates engine.yaml while the transports sit above it (they
resolve ``${...}`` settings with spec.config). Owns the declaration types;
must not import anything of the engine (every layer reads it).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass(frozen=True)
class Transport:
    """A transport of engine.yaml (``transport: smtp``): the settings it needs and its module."""

    name: str
    #: settings a channel with this transport must have (engine.yaml says which is missing)
    needs: tuple[str, ...]
    #: the module in engine.channels whose ``open_session(config, root)`` opens a session
    module: str
    #: setting -> a pure check of its value (after ``${VAR}`` resolution): the problem, or None when usable;
    #: engine validate reports a problem naming the setting (the session checks again, fully, when it opens)
    checks: Mapping[str, Callable[[str], str | None]] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.name, self.needs, self.module))


#: Names a template part cannot take: the other fields of a stored message (engine.run.dispatch.serialize
#: keeps the parts beside them, so a kind's parts are free names except these).
RESERVED_NAMES = frozenset({"kind", "to", "from", "headers", "discount_code", "parts", "key", "origin"})

#: The customers' key column: a kind whose contact field it is (a webhook) addresses every customer by
#: their id, needs no mapped address column and never lacks an address.
CUSTOMER_KEY = "customer_id"

#: The header of a message that carries its signed per-message link of the service (``printed_link``).
PRINTED_LINK = "X-Engine-Printed-Link"

#: The file outbox (no server: the demo, tests); every kind can write to it.
FILE_OUTBOX = Transport("file", ("path",), "engine.channels.outbox")


def no_headers(unsubscribe_url: str, *, campaign: str, sender: str) -> Mapping[str, str]:
    return {}


def present(address: object) -> bool:
    """Any non-empty value is an address (what the engine checks of emails and phone numbers today)."""
    return bool(address)


def as_given(address: str) -> str:
    return address


def address_as_given(address: str, settings: Mapping[str, object]) -> str | None:
    return address


def no_setting_problems(settings: Mapping[str, object], root: str) -> list[tuple[str, str, str]]:
    return []


def no_address(rng: random.Random, first_name: str, last_name: str, customer_id: int) -> str | None:
    return None


def no_contacts(rows: list[Mapping[str, object]]) -> str | None:
    return None


def contact_identity(row: Mapping[str, object]) -> str:
    return str(row)


@dataclass(frozen=True)
class ContactEntity:
    """Contacts kept in a source of their own, several per customer (web push subscriptions), instead of a
    customer column: the source is mapped in engine.yaml like any entity, with these columns."""

    #: the entity's name in engine.yaml's ``sources``
    entity: str
    #: its columns (all required; ``customer_id`` among them)
    columns: tuple[str, ...]
    #: a customer's live rows -> the contact value the message is addressed to (its ``to``); None: none usable
    value: Callable[[list[Mapping[str, object]]], str | None] = no_contacts
    #: one row's identity, the form in which the provider reports it gone (a push endpoint)
    identity: Callable[[Mapping[str, object]], str] = contact_identity


@dataclass(frozen=True)
class ChannelKind:
    """One kind of channel (``kind:`` in engine.yaml), declared once in its module of engine.channel_kinds."""

    #: the kind's name in engine.yaml, the ledger, unsubscribe links and the outbox's folders
    name: str
    #: how messages speak of it ("sends SMS without quiet hours")
    label: str
    #: the customer column (an optional column of the customers source) holding the address
    contact_field: str
    #: the shop's optional boolean customer column: false means no consent for this kind
    consent_column: str
    #: the transports that carry this kind, in the order the fix of a wrong one lists them
    transports: tuple[Transport, ...]
    #: template blocks every message of this kind needs
    required_parts: tuple[str, ...]
    #: template blocks of which a message needs at least one (the body); () when none is asked for
    body_parts: tuple[str, ...] = ()
    #: template blocks a message may have (an icon, a click URL)
    optional_parts: tuple[str, ...] = ()
    #: parts rendered with HTML autoescaping (every other part is plain text, whitespace-trimmed;
    #: a part named "subject" is also folded onto one line)
    html_parts: tuple[str, ...] = ("html",)
    #: templates of this kind are named ``<name><template_suffix>`` (a convention, tested on the shipped ones)
    template_suffix: str = ".j2"
    #: templates fill in the shop's locked layout, and the engine appends its footer (unsubscribe link)
    locked_layout: bool = False
    #: a message is an RFC 5322 document (MIME parts): the outbox writes .eml files, show-message prints it
    rfc5322: bool = False
    #: a step sending this kind without quiet hours gets a warning from engine validate
    quiet_hours_expected: bool = False
    #: the headers every message carries, given its unsubscribe link (and, by keyword, its campaign and sender)
    headers: Callable[..., Mapping[str, str]] = no_headers
    #: whether a customer's contact value can receive a message (else the message is skipped: no_contact)
    usable_address: Callable[[object], bool] = present
    #: the address as it is sent (e.g. a phone number in E.164), given the channel's settings in engine.yaml;
    #: None: the value is no valid address (the message is skipped: invalid_contact, never sent)
    normal_address: Callable[[str, Mapping[str, object]], str | None] = address_as_given
    #: usual warehouse names of the contact field besides its own (engine init proposes them for the mapping)
    contact_column_names: tuple[str, ...] = ()
    #: the kind's own channel settings -> what leaving it out means (engine config show)
    setting_defaults: Mapping[str, str] = field(default_factory=dict)
    #: the form in which an address is suppressed after a permanent failure, and looked up
    suppression_key: Callable[[str], str] = as_given
    #: a demo customer's address (the embedded demo shop), drawn from ``rng``; None: the customer has none;
    #: a mapping of columns for an address that spans several (``address_fields``)
    sample_address: Callable[[random.Random, str, str, int], str | Mapping[str, str | None] | None] = no_address
    #: the scope an unsubscribe from this kind is recorded under ("all" covers every kind); default: its name
    unsubscribe_scope: str = field(default="")
    #: the contacts live in a source of their own, several per customer (``contact_field`` then names the
    #: customer attribute the pass fills from it, set-based per batch: engine.run.contacts); None: a customer column
    contact_entity: ContactEntity | None = None
    #: the provider takes a step's ``delivery`` options (time to live, urgency, topic) as message headers
    delivery_options: bool = False
    #: a permanent failure suppresses the address (an email's hard bounce); False: it is final for that
    #: message only (a webhook receiver's 4xx says nothing about the customer; web push reports a gone
    #: subscription as such, and a 400 or an oversized payload is the message's fault)
    suppress_on_permanent_failure: bool = True
    #: further customer columns an address of this kind is made of (a postal address: postal code, city, ...)
    address_fields: tuple[str, ...] = ()
    #: a customer's address from their mapped columns when it spans several (``address``); None: incomplete
    address_of: Callable[[Mapping[str, object]], object] | None = None
    #: the customer columns ``address_of`` reads besides the contact field and ``address_fields`` (a letter's
    #: recipient name): a pass fetches only the columns something reads (engine.run.attributes)
    recipient_fields: tuple[str, ...] = ()
    #: quiet hours defer its messages; False (a letter takes days): only quiet hours configured for the
    #: channel itself in defaults.quiet_hours do (engine.run.policies)
    observes_quiet_hours: bool = True
    #: a step sending only this kind without a freshness window gets a warning from engine validate
    freshness_expected: bool = True
    #: each message carries the service's signed per-message link (header ``PRINTED_LINK``), printed on it
    printed_link: bool = False
    #: problems engine validate can see in a channel's settings (relative paths are under ``root``, the
    #: project folder): (setting, message, fix) each - e.g. a font file that does not exist; a ``${...}``
    #: value is the environment's, checked when it is used
    setting_problems: Callable[[Mapping[str, object], str], list[tuple[str, str, str]]] = no_setting_problems

    def __post_init__(self) -> None:
        reserved = [part for part in self.parts if part in RESERVED_NAMES or not part.isidentifier()]
        if reserved:
            raise ValueError(f"channel kind '{self.name}': template parts {reserved} cannot be part names "
                             f"(reserved: {', '.join(sorted(RESERVED_NAMES))}; a part name is an identifier)")
        if not self.unsubscribe_scope:
            object.__setattr__(self, "unsubscribe_scope", self.name)

    def address(self, customer: Mapping[str, object]) -> object:
        """The customer's address for this kind: the contact field's value, or what ``address_of`` makes."""
        return customer.get(self.contact_field) if self.address_of is None else self.address_of(customer)

    @property
    def plain_address(self) -> bool:
        """Whether the contact field's value itself is the address, as given and suppressed as given: any
        non-empty value is usable (``present``), sent as its text (``address_as_given``) and its own
        suppression key (``as_given``), with no ``address_of``. The channel choice then reads the field
        directly instead of calling the four functions per message (they would give the same)."""
        return (self.address_of is None and self.usable_address is present
                and self.normal_address is address_as_given and self.suppression_key is as_given)

    @property
    def parts(self) -> tuple[str, ...]:
        """Every template block a message of this kind is made of."""
        return tuple(dict.fromkeys(self.required_parts + self.body_parts + self.optional_parts))

    @property
    def customer_columns(self) -> tuple[str, ...]:
        """The customer columns a message of this kind reads outside its template: its address (the contact
        field, ``address_fields``, ``recipient_fields``) and its consent column."""
        columns = (self.address_column, *self.address_fields, *self.recipient_fields, self.consent_column)
        return tuple(dict.fromkeys(column for column in columns if column))

    @property
    def address_column(self) -> str | None:
        """The optional customer column holding the address; None when the contact field is the key."""
        return None if self.contact_field == CUSTOMER_KEY else self.contact_field

    @property
    def transport_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.transports)
