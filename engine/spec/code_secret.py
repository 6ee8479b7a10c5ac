"""The code secret: the key that signs unsubscribe links and makes discount codes unguessable.

Owns what a usable secret is (at least ``MIN_LENGTH`` characters, not a known
default such as ``change-me``, not one character repeated), key rotation (the
current secret, ``defaults.code_secret`` = ``${ENGINE_CODE_SECRET}``, signs;
the comma-separated ``defaults.previous_code_secrets`` =
``${ENGINE_CODE_SECRETS_PREVIOUS:-}`` only verify), and the demo's exception:
a project whose engine.yaml has ``demo:`` (``true`` or the demo shop's
section) may sign with the demo's public built-in secret, with a warning.

Anywhere else a missing, default or weak secret is an error naming the
engine.yaml setting and the fix: ``engine validate`` reports it
(``secret_issues``), ``engine run`` and the service refuse to start and the
reconciler refuses to sign with it (``code_secrets``).

Discount codes are HMACs of the message key with the *signing* secret, made
when a message is rendered and stored with its content; retries and recovery
send the stored content, so a rotation changes the codes of messages
rendered after it, never of messages already stored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from engine.spec.config import ENV_REFERENCE, CONFIG_FILE, resolve
from engine.errors import ConfigError, Issue, ProjectInvalid
from engine.masking import remember
from engine.model import ProjectConfig

SECRET_ENV = "ENGINE_CODE_SECRET"
PREVIOUS_ENV = "ENGINE_CODE_SECRETS_PREVIOUS"
#: 32 characters: 128 bits as hex, 192 as base64; ``openssl rand -hex 32`` gives 64
MIN_LENGTH = 32
#: a random secret of MIN_LENGTH characters has far more different characters than this
MIN_DISTINCT = 8
#: what the demo signs with when no usable secret is set; public, like every default
DEMO_SECRET = "demo-secret-change-me"
#: defaults that shipped with the engine or its examples, and the usual placeholders
KNOWN_SECRETS = frozenset({
    "change-me", "changeme", "change_me", DEMO_SECRET, "secret", "password", "test", "default", "example",
})



def set_secret(variable: str = SECRET_ENV) -> str:
    return f"set {variable} to a random string of at least {MIN_LENGTH} characters (e.g. `openssl rand -hex 32`)"


def how_to_fix(variable: str = SECRET_ENV) -> str:
    return (f"{set_secret(variable)} in the environment of engine run and engine validate; only a demo project "
            f"(demo: in {CONFIG_FILE}) may use the built-in demo secret")


@dataclass(frozen=True)
class CodeSecrets:
    """The resolved keys: ``signing`` signs new links and codes; every one of ``verifying`` verifies."""

    signing: str
    previous: tuple[str, ...] = ()
    #: a demo project signing with a default or weak secret: the line to show (None otherwise)
    warning: str | None = None

    @property
    def verifying(self) -> tuple[str, ...]:
        return (self.signing, *self.previous)


def weakness(value: str) -> str | None:
    """Why ``value`` cannot be a code secret, or None when it can."""
    if value == "":
        return "is empty"
    lowered = value.strip().lower()
    if lowered in KNOWN_SECRETS or "change-me" in lowered or "changeme" in lowered:
        return "is a known default that anyone can read"
    if len(value) < MIN_LENGTH:
        return f"has {len(value)} characters; at least {MIN_LENGTH} are needed"
    if len(set(value)) < MIN_DISTINCT:
        return f"uses only {len(set(value))} different characters; a random secret uses many more"
    return None


@dataclass(frozen=True)
class _Problem:
    setting: str  # "code_secret" or "previous_code_secrets"
    message: str
    fix: str


def _variables(raw: str) -> list[str]:
    return [match.group(1) for match in ENV_REFERENCE.finditer(raw)]


def _signing(config: ProjectConfig, env: Mapping[str, str]) -> tuple[str | None, _Problem | None]:
    raw = config.code_secret
    variables = _variables(raw)
    how = how_to_fix(variables[0]) if variables else f"read it from the environment (code_secret: ${{{SECRET_ENV}}}) and {how_to_fix()}"
    try:
        value = resolve(raw, env)
    except ConfigError:
        unset = [v for v in variables if env.get(v, "") == ""]
        return None, _Problem("code_secret", f"the code secret reads {', '.join(unset)}, which is not set: unsubscribe "
                              "links and discount codes cannot be signed", how)
    fallback = [m for m in ENV_REFERENCE.finditer(raw) if env.get(m.group(1), "") == "" and m.group(2) is not None]
    if fallback:
        return value, _Problem("code_secret", f"{fallback[0].group(1)} is not set, so the code secret is the default "
                               f"written in {CONFIG_FILE}: anyone who reads it can forge unsubscribe links", how)
    problem = weakness(value)
    if problem:
        source = f"the value of {variables[0]}" if variables else f"written in {CONFIG_FILE}"
        return value, _Problem("code_secret", f"the code secret ({source}) {problem}", how)
    return value, None


def _previous(config: ProjectConfig, env: Mapping[str, str]) -> tuple[list[str], list[_Problem]]:
    raw = config.previous_code_secrets
    source = ", ".join(_variables(raw)) or CONFIG_FILE
    try:
        value = resolve(raw, env)
    except ConfigError as exc:
        return [], [_Problem("previous_code_secrets", f"the previous code secrets: {exc}",
                             f"set it to the comma-separated earlier secrets, or give a default: ${{{PREVIOUS_ENV}:-}}")]
    keys, problems = [], []
    for number, key in enumerate((k.strip() for k in value.split(",")), start=1):
        if not key:
            continue
        problem = weakness(key)
        if problem:
            problems.append(_Problem("previous_code_secrets",
                                     f"previous code secret {number} (of {source}) {problem}; links signed with it can "
                                     "be forged, so it must not verify them", f"remove it from {source}"))
        else:
            remember(key)  # never shown in a message, like the current one (config.resolve)
            keys.append(key)
    return keys, problems


def _evaluate(config: ProjectConfig, environ: Mapping[str, str] | None) -> tuple[CodeSecrets | None, list[_Problem]]:
    env = os.environ if environ is None else environ
    signing, problem = _signing(config, env)
    previous, problems = _previous(config, env)
    problems = ([problem] if problem else []) + problems
    if not problems:
        return CodeSecrets(signing=signing, previous=tuple(k for k in dict.fromkeys(previous) if k != signing)), []
    if not config.is_demo:
        return None, problems
    signing = signing if signing else DEMO_SECRET
    warning = ("demo project: unsubscribe links and discount codes are signed with a secret anyone can know, so "
               f"anyone can forge its unsubscribe links. For a real shop remove demo: from {CONFIG_FILE} and {set_secret()}.")
    return CodeSecrets(signing=signing, previous=tuple(k for k in dict.fromkeys(previous) if k != signing),
                       warning=warning), []


def secret_issues(config: ProjectConfig, environ: Mapping[str, str] | None = None) -> list[Issue]:
    """The validation errors of the code secrets (none for a demo project), at their engine.yaml setting."""
    _, problems = _evaluate(config, environ)
    if not problems:
        return []
    from engine.spec.load import load_yaml_file  # positions of the settings, when engine.yaml still parses

    doc = load_yaml_file(Path(config.root) / CONFIG_FILE, config.file)
    return [doc.issue(("defaults", p.setting), p.message, fix=p.fix) for p in problems]


def code_secrets(config: ProjectConfig, environ: Mapping[str, str] | None = None) -> CodeSecrets:
    """The keys to sign and verify with; ``ProjectInvalid`` (the ``secret_issues``) when they are not usable."""
    secrets, problems = _evaluate(config, environ)
    if secrets is None:
        raise ProjectInvalid(secret_issues(config, environ))
    return secrets
