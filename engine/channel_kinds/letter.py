"""The letter kind: a printed postal letter (PDF) with a QR code, to the customer's postal address.

The address spans several customer columns (street, postal_code, city and an
optional country, with first_name/last_name as the recipient's name); a letter
goes out only to a complete one, else the message is skipped no_contact.
Templates have an ``address`` block (what the envelope's window shows) and an
HTML ``body``, optionally a ``subject`` line. Letters take days: quiet hours do
not defer them unless configured for the channel itself, and a step without
freshness gets no warning. Each letter carries the service's signed link of the
message, printed as a QR code. Transports: a print shop's drop folder and a
print provider's HTTP API. Declarations only.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping

from engine.channel_kinds.declaration import ChannelKind, Transport

NAME = "letter"

#: the customer columns of a postal address besides the street (country is optional: a domestic letter)
ADDRESS_FIELDS = ("postal_code", "city", "country")


def _text(customer: Mapping[str, object], column: str) -> str:
    value = customer.get(column)
    return " ".join(str(value).split()) if value is not None else ""


def postal_address(customer: Mapping[str, object]) -> str | None:
    """The recipient's address as the lines of the window (name, street, postal code and city, country
    in capitals), or None when it is incomplete: a name, the street, the postal code and the city are
    needed."""
    name = " ".join(part for part in (_text(customer, "first_name"), _text(customer, "last_name")) if part)
    street, postal_code, city = _text(customer, "street"), _text(customer, "postal_code"), _text(customer, "city")
    if not (name and street and postal_code and city):
        return None
    country = _text(customer, "country").upper()
    return "\n".join(line for line in (name, street, f"{postal_code} {city}", country) if line)


#: (postal code, city, country) of the demo's cities; a domestic (German) address has no country line
_DEMO_PLACES = {"Berlin": ("10115", ""), "Hamburg": ("20095", ""), "Munich": ("80331", ""),
                "Cologne": ("50667", ""), "Vienna": ("1010", "Austria"), "Zurich": ("8001", "Switzerland")}
_DEMO_STREETS = ("Hauptstraße", "Bahnhofstraße", "Lindenallee", "Gartenweg", "Schillerstraße", "Marktplatz")


def sample_address(rng: random.Random, first_name: str, last_name: str, customer_id: int) -> Mapping[str, str | None]:
    """90 % of the demo customers have a postal address. Drawn from a generator of its own (seeded by
    the customer id), so adding letters changed none of the demo shop's other data."""
    own = random.Random(f"{NAME}-{customer_id}")
    if own.random() >= 0.9:
        return {"street": None, "postal_code": None, "country": None}
    city = own.choice(sorted(_DEMO_PLACES))
    postal_code, country = _DEMO_PLACES[city]
    return {"street": f"{own.choice(_DEMO_STREETS)} {own.randint(1, 120)}", "postal_code": postal_code,
            "city": city, "country": country or None}


#: the font files a letter is set in unless the channel names others (Debian: fonts-dejavu-core)
DEFAULT_FONTS = {"font": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                 "font_bold": "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"}


def setting_problems(settings: Mapping[str, object], root: str) -> list[tuple[str, str, str]]:
    """A font file that does not exist (a relative path is under the project folder ``root``), seen by
    engine validate; a ``${...}`` path is checked when it is used."""
    problems = []
    for key, default in DEFAULT_FONTS.items():
        path = str(settings.get(key, settings.get("font", default)))
        if "${" not in path and not (Path(root) / path).is_file():
            problems.append((key, f"the font file {path} does not exist",
                             f"install it (Debian: fonts-dejavu-core) or set {key}: to a TrueType font file"))
    return problems


KIND = ChannelKind(
    name=NAME,
    label="letters",
    contact_field="street",
    address_fields=ADDRESS_FIELDS,
    address_of=postal_address,
    recipient_fields=("first_name", "last_name"),
    consent_column=f"{NAME}_consent",
    transports=(Transport("drop_folder", ("path",), "engine.channels.letter_drop"),
                Transport("print_api", ("url",), "engine.channels.letter_api")),
    required_parts=("address",),
    body_parts=("body",),
    optional_parts=("subject",),
    html_parts=("body",),
    template_suffix=f".{NAME}.j2",
    observes_quiet_hours=False,
    freshness_expected=False,
    printed_link=True,
    setting_problems=setting_problems,
    sample_address=sample_address,
)
