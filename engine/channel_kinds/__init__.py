"""The registry of channel kinds: one module per kind in this package, found by looking.

Every module here except ``declaration`` declares one kind as its ``KIND``
(a ``declaration.ChannelKind``); the registry imports them all, in module
name order, when first imported. Adding a kind is adding its module here (and
its entry in schema/project.schema.json, and its tests): the spec, the
templates, the policies, the pass, the outbox, the logs and the command line
read what they need from ``kind(name)`` and the lookups below, never a kind's
name. Transports are declared by the kinds that use them (``Transport``);
engine.channels opens them by module name. Pure: no I/O beyond importing
this package's modules; imports nothing of the engine outside it.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Mapping

from engine.channel_kinds.declaration import ChannelKind, ContactEntity, Transport


def _discover() -> tuple[dict[str, ChannelKind], dict[str, Transport]]:
    kinds: dict[str, ChannelKind] = {}
    transports: dict[str, Transport] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name == "declaration":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        declared = getattr(module, "KIND", None)
        if not isinstance(declared, ChannelKind):
            raise TypeError(f"{module.__name__} declares no KIND = ChannelKind(...): every module of "
                            f"engine.channel_kinds is one channel kind")
        if declared.name in kinds:
            raise TypeError(f"{module.__name__} declares the kind '{declared.name}' a second time")
        kinds[declared.name] = declared
        for transport in declared.transports:
            if transports.setdefault(transport.name, transport) != transport:
                raise TypeError(f"{module.__name__} declares the transport '{transport.name}' differently from "
                                f"another kind: share one Transport declaration")
    return kinds, transports


#: kind name -> its declaration, in module name order
KINDS: Mapping[str, ChannelKind]
#: transport name -> its declaration (a transport several kinds use is declared once)
TRANSPORTS: Mapping[str, Transport]
KINDS, TRANSPORTS = _discover()


def kind(name: str) -> ChannelKind:
    """The declaration of kind ``name`` (a KeyError for an unknown one: engine.yaml's schema lists the kinds)."""
    return KINDS[name]


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def transport(name: str) -> Transport | None:
    return TRANSPORTS.get(name)


def contact_fields() -> tuple[str, ...]:
    """The optional customer columns holding an address, one per kind (email, phone, ...); a kind that
    addresses customers by their key (``CUSTOMER_KEY``) adds none, nor does one whose contacts live in a
    source of their own (``contact_entity``)."""
    return tuple(dict.fromkeys(k.address_column for k in KINDS.values()
                               if k.address_column and k.contact_entity is None))


def contact_entities() -> dict[str, ContactEntity]:
    """The sources of contacts kept apart from the customers (several per customer), by entity name."""
    return {k.contact_entity.entity: k.contact_entity for k in KINDS.values() if k.contact_entity is not None}


def address_fields() -> tuple[str, ...]:
    """The further customer columns of the kinds whose address spans several (a postal address's postal
    code, city, country): optional customer columns, of no declared type (city may be any attribute)."""
    return tuple(dict.fromkeys(f for k in KINDS.values() for f in k.address_fields if f not in contact_fields()))


def consent_columns() -> tuple[str, ...]:
    return tuple(dict.fromkeys(k.consent_column for k in KINDS.values()))


def unsubscribe_scopes() -> tuple[str, ...]:
    """What an unsubscribe can name besides "all": each kind's scope."""
    return tuple(dict.fromkeys(k.unsubscribe_scope for k in KINDS.values()))


__all__ = ["KINDS", "TRANSPORTS", "ChannelKind", "ContactEntity", "Transport", "address_fields", "consent_columns",
           "contact_entities",
           "contact_fields", "kind", "names",
           "transport", "unsubscribe_scopes"]
