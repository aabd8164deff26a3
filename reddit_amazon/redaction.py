"""Secrets kept out of every text the toolkit prints, logs or writes down: the one redaction all of them use.

An endpoint's error may quote what it was sent, and a hostile or misconfigured one may quote it in any form: the
key as given ("Incorrect API key provided: sk-..."), percent-encoded in a URL (``?api_key=sk%2D...``), base64-encoded
(``Authorization: Basic <base64 of user:key>``), or a URL with credentials of its own (``user:password@host``,
``;api_key=`` in the path). :func:`redact_secrets` removes every form of a secret it knows (those given, and the
values of secret-named environment variables) and the credentials any text shows by their shape.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re

#: The ``user:password@`` of a URL in a text (scheme-relative ``//user@host`` too): up to the last ``@`` of the
#: authority, as ``urlsplit`` reads it.
URL_USERINFO = re.compile(r"(?<=//)[^/?#\s]*@")

#: Environment variables whose values are secrets (``OPENAI_API_KEY``, ``HF_TOKEN``).
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
#: Shorter values are too likely to occur by chance (and too weak to be a real key).
_MIN_SECRET_LENGTH = 8
#: ``name=value`` after a URL's ``?`` / ``&`` (query), ``;`` (path parameter) or ``#`` (fragment, where OAuth puts
#: ``access_token``), in a URL with or without a scheme (``POST /v1/chat/completions?api_key=...``).
#: A value ends at the next parameter's ``?`` too: ``?x=1?api_key=…`` (a query appended to a URL that had one).
_URL_PARAMETER = re.compile(r"(?<=[?&;#])(?P<name>[^=&;#\s/\"'<>]+)=(?P<value>[^?&;#\s\"'<>]*)")
#: A secret parameter's value, which a ``;`` or ``?`` does not end: a query's ``?token=a;b`` is ``a;b`` to
#: ``parse_qsl`` and to web servers, and in a path (``;api_key=a;v=2``) the text cannot tell which ``;`` is the
#: secret's own.
_SECRET_VALUE = re.compile(r"[^&#\s\"'<>]*")
#: The parts of a parameter's name: split at ``_``, ``-``, ``.`` and where the case changes (``apiKey``,
#: ``X-Amz-Signature``).
_NAME_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
#: A name part ending in one of these names a secret, alone or glued (``api_key``, ``apikey``, ``accessToken``,
#: ``client_secret``, ``X-Amz-Signature``), not ``keyword``, ``max_tokens`` or ``tokenizer``.
_SECRET_PART_ENDINGS = ("key", "keys", "token", "secret", "secrets", "password", "passwd", "signature")
#: Name parts that name a secret only as the whole part (``auth``, ``auth_method``, ``sig``), not ``author``.
_SECRET_PARTS = frozenset({"auth", "oauth", "authorization", "authcode", "passcode", "sig", "verifier"})
#: Parts that make a ``code`` part a credential (``access_code``, ``auth_code``), not ``country_code``.
_CODE_OWNERS = frozenset({"access", "auth", "oauth", "authorization", "verification", "device", "grant"})
#: Names of a secret only as the whole name: OAuth's authorization code, Azure Functions' key (``?code=…``), not
#: ``country_code`` or ``deployment_code``.
_SECRET_NAMES = frozenset({"code"})
#: A header or field that holds a credential, shown as a header (``Authorization: Bearer ...``, ``x-api-key: ...``),
#: a JSON / dict entry (``'authorization': 'Basic ...'``) or ``name=value``: its value, after the scheme's name.
_CREDENTIAL_FIELD = re.compile(
    r"(?<![A-Za-z0-9])(?P<name>(?:proxy-)?authorization|api[-_]?key|(?:access|refresh|id|auth)[-_]token"
    r"|client[-_]secret|password|passwd|pwd|signature|subscription-key)"
    r"(?P<separator>[\"']?\s*[:=]\s*(?P<quote>[\"'])?)(?P<scheme>(?:basic|bearer|token|digest|negotiate|ntlm)\s+)?"
    r"(?P<value><(?:[^<>\s]+ )?redacted>"  # a known secret's marker
    r"|(?(quote)(?:\\.|(?!(?P=quote))[^\\\n])+"  # a quoted value: all of it, to its closing quote
    r"|[^\s\"',;&#}\]<>]+))", re.IGNORECASE)
#: A field's value already redacted (a known secret's marker): kept, with the scheme before it.
_MARKER = re.compile(r"<(?:[^<>\s]+ )?redacted>")
#: A word (or hyphenated words: ``token-based``) with the sentence going on after it: ``password: must be at
#: least 8 characters``, ``Bearer token-based auth failed`` are prose, not a credential.
_PROSE_WORDS = re.compile(r"[A-Za-z][a-z]*(?:-[a-z]+)*")
_SENTENCE_GOES_ON = re.compile(r"[ \t]+[A-Za-z]")
#: A credential after its scheme's name with no header named: ``Bearer <token>`` (a token has a digit or a sign,
#: the word after "Bearer" in prose has not, or is hyphenated words a sentence goes on after) or ``Basic <base64>``
#: (checked to decode to ``user:password``).
_SCHEME_CREDENTIAL = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+(?P<value>[A-Za-z0-9._~+/-]{8,}=*)", re.IGNORECASE)
#: A run of base64 (standard or URL-safe alphabet) long enough to hold a secret.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_TO_STANDARD_BASE64 = str.maketrans("-_", "+/")

REDACTED = "<redacted>"


def redact_secrets(text: str, *secrets: str | None) -> str:
    """``text`` without ``secrets``, the values of secret-named environment variables, or any credential it shows.

    A known secret is replaced in every form an endpoint can echo it in: as given, percent-encoded (any case, any
    mix of encoded and plain characters, encoded twice), JSON-escaped, and inside base64 (alone or within
    ``user:secret``). Whatever the secret, the credentials a text shows by their shape go too: a URL's
    ``user:password@``, secret-named URL parameters (query, ``;`` path parameters, fragment), and the value of an
    ``Authorization`` (or API-key) header or of a ``Bearer`` / ``Basic`` credential."""
    known = {value: f"<{name} redacted>" for name, value in os.environ.items()
             if len(value) >= _MIN_SECRET_LENGTH and _SECRET_NAME.search(name)}
    for secret in secrets:  # one from the environment keeps the name of its variable
        if secret and len(secret) >= _MIN_SECRET_LENGTH:
            known.setdefault(secret, "<key redacted>")
    for secret, marker in sorted(known.items(), key=lambda item: -len(item[0])):  # a longer one holding another
        text = _any_encoding(secret).sub(marker, text)
    if known:
        text = _BASE64_RUN.sub(lambda run: _base64_holding(run[0], known) or run[0], text)
    text = URL_USERINFO.sub("<credentials redacted>@", text)
    text = redact_url_parameters(text)  # first: a URL's value runs past a ";", a field's (password=a;b) does not
    text = _CREDENTIAL_FIELD.sub(_redacted_field, text)
    return _SCHEME_CREDENTIAL.sub(_redacted_scheme_credential, text)


def redact_url_parameters(text: str) -> str:
    """``text`` with the value of each secret-named URL parameter (:func:`is_secret_parameter`) redacted:
    ``name=value`` after a ``?`` / ``&`` (query), ``;`` (path parameter) or ``#`` (fragment), the value up to the
    next ``&``, ``#``, quote or space (a ``;`` or ``?`` does not end it). A parameter with no value holds no
    secret."""
    shown, end = [], 0
    for parameter in _URL_PARAMETER.finditer(text):
        if parameter.start() < end or not is_secret_parameter(parameter["name"]):
            continue  # inside a value just redacted, or no secret
        value_end = _SECRET_VALUE.match(text, parameter.start("value")).end()
        if value_end > parameter.start("value"):
            shown += [text[end:parameter.start("value")], REDACTED]
            end = value_end
    return "".join(shown) + text[end:]


@functools.lru_cache(maxsize=1024)
def is_secret_parameter(name: str) -> bool:
    """Whether a URL parameter named ``name`` carries a credential: ``api_key``, ``apiKey``, ``x-api-key``,
    ``access_token``, ``client_secret``, ``sig``, ``X-Amz-Signature``, ``auth``, ``code`` (as the whole name),
    ``access_code``, ``code_verifier``, ``apikeys``, not ``author``, ``keyword``, ``country_code`` or
    ``api-version``."""
    if name.lower() in _SECRET_NAMES:
        return True
    parts = [part.lower() for part in _NAME_PART.findall(name)]
    if "code" in parts and _CODE_OWNERS.intersection(parts):
        return True
    return any(part in _SECRET_PARTS or part.endswith(_SECRET_PART_ENDINGS) for part in parts)


@functools.lru_cache(maxsize=64)
def _any_encoding(secret: str) -> re.Pattern[str]:
    """``secret`` with each character as itself, percent-encoded (hex digits in either case, ``%25`` for a
    second encoding), ``+`` for a space, or JSON-escaped (``\\/``)."""
    parts = []
    for char in secret:
        forms = [re.escape(char), "".join(_percent_encoded(byte) for byte in char.encode())]
        if char == " ":
            forms.append(r"\+")
        if char in "/\"\\":
            forms.append(re.escape("\\" + char))
        parts.append(f"(?:{'|'.join(forms)})")
    return re.compile("".join(parts))


def _percent_encoded(byte: int) -> str:
    return "%(?:25)?" + "".join(f"[{digit}{digit.lower()}]" if digit.isalpha() else digit for digit in f"{byte:02X}")


def _base64_holding(run: str, known: dict[str, str]) -> str | None:
    """The marker of the secret that ``run`` decodes to a text holding (at any of the 4 alignments a run glued
    to other characters may have), or None."""
    standard = run.rstrip("=").translate(_TO_STANDARD_BASE64)
    for start in range(4):
        chunk = standard[start:]
        if len(chunk) % 4 == 1:  # a stray last character no base64 ends in
            chunk = chunk[:-1]
        decoded = _decoded_base64(chunk)
        for secret, marker in known.items():
            if _any_encoding(secret).search(decoded) or secret.encode().decode("latin-1") in decoded:
                return marker
    return None


#: Field names that also open sentences ("password: must be ...", "signature: does not match ...").
_PROSE_PRONE_FIELDS = ("password", "passwd", "pwd", "signature")


def _redacted_field(match: re.Match[str]) -> str:
    """A credential field with its value redacted, its name, separator and scheme kept; a marker kept as it is,
    and a ``password:`` that starts a sentence (``password: must be at least 8 characters``) left alone."""
    unquoted_colon = ":" in match["separator"] and not {'"', "'"} & set(match["separator"])
    if _MARKER.fullmatch(match["value"]) or (
            match["name"].lower() in _PROSE_PRONE_FIELDS and unquoted_colon and not match["scheme"]
            and _reads_as_prose(match, "value")):
        return match[0]
    return f"{match['name']}{match['separator']}{match['scheme'] or ''}{REDACTED}"


def _reads_as_prose(match: re.Match[str], group: str) -> bool:
    """The ``group`` of ``match`` is a word (or hyphenated words) that a sentence goes on after."""
    return bool(_PROSE_WORDS.fullmatch(match[group]) and _SENTENCE_GOES_ON.match(match.string, match.end(group)))


def _redacted_scheme_credential(match: re.Match[str]) -> str:
    value = match["value"]
    if match["scheme"].lower() == "bearer":  # a token has a digit or a sign, a word in prose has not
        is_credential = bool(re.search(r"[0-9._~+/=-]", value)) and not _reads_as_prose(match, "value")
    else:
        is_credential = ":" in _decoded_base64(value)
    return f"{match['scheme']} {REDACTED}" if is_credential else match[0]


def _decoded_base64(value: str) -> str:
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return ""
