"""The HMAC-SHA256 every signed link of the engine is made with (unsubscribe, scan links).

Owns keying once per secret (``keyed``): each signature copies the keyed state instead of hashing the
key's two padded blocks again. Must not know what is signed nor how a link looks.
"""
from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache


@lru_cache(maxsize=16)
def keyed(secret: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed with ``secret`` and nothing fed yet: copy it, never update it."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def sign(secret: str, text: str) -> str:
    """The hex HMAC-SHA256 of ``text`` under ``secret``."""
    mac = keyed(secret).copy()
    mac.update(text.encode())
    return mac.hexdigest()
