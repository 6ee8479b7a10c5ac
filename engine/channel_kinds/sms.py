"""The SMS kind: a text to the customer's phone number, over an HTTP provider API or the file outbox.

SMS templates have one ``text`` block and carry their opt-out text themselves;
a step sending SMS without quiet hours gets a warning. A phone number is
validated and sent in E.164 form (``+4915123456789``) by the phonenumbers
library (Google's libphonenumber metadata: numbering plans of every country,
kept current, which no hand-written pattern matches); a number without a
``+`` country code is read in the channel's ``default_region`` (ISO 3166
code, e.g. ``DE``), and without one it is invalid. Declarations only.
"""
from __future__ import annotations

import random
from typing import Mapping

from engine.channel_kinds.declaration import FILE_OUTBOX, ChannelKind, Transport

NAME = "sms"
#: the channel setting naming the region of numbers written without a country code
REGION_SETTING = "default_region"


def e164(address: str, settings: Mapping[str, object]) -> str | None:
    """The number in E.164 form, or None when it is no valid phone number (in the channel's default region)."""
    import phonenumbers  # ~30 ms of metadata: only when a number is checked

    region = settings.get(REGION_SETTING)
    try:
        number = phonenumbers.parse(str(address), str(region).upper() if region else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def region_problems(settings: Mapping[str, object], root: str) -> list[tuple[str, str, str]]:
    region = settings.get(REGION_SETTING)
    if region is None:  # nothing to check: validating a project then never loads phonenumbers' metadata
        return []
    import phonenumbers

    if str(region).upper() in phonenumbers.SUPPORTED_REGIONS:
        return []
    return [(REGION_SETTING, f"'{region}' is not a region phone numbers are known for",
             "give the ISO 3166 country code of numbers written without +country code, e.g. DE, AT, GB or US")]


def sample_address(rng: random.Random, first_name: str, last_name: str, customer_id: int) -> str | None:
    """40 % of the demo customers gave a (German mobile) number."""
    return f"+49151{rng.randint(10_000_000, 99_999_999)}" if rng.random() < 0.4 else None


KIND = ChannelKind(
    name=NAME,
    label="SMS",
    contact_field="phone",
    consent_column=f"{NAME}_consent",
    transports=(Transport("http", ("url",), "engine.channels.sms_http"), FILE_OUTBOX),
    required_parts=("text",),
    template_suffix=f".{NAME}.j2",
    quiet_hours_expected=True,
    normal_address=e164,
    setting_problems=region_problems,
    contact_column_names=("phone_number", "mobile", "mobile_phone", "telephone", "tel", "telefon", "handy"),
    setting_defaults={REGION_SETTING: "(none: only numbers with +country code are valid)"},
    sample_address=sample_address,
)
