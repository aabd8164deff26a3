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
#: The parts of a name: split at ``_``, ``-``, ``.`` and where the case changes (``apiKey``, ``X-Amz-Signature``,
#: ``OPENAI_API_KEY``, ``reddit.salt``), compared in lower case.
_NAME_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
#: A name part that is or ends in one of these names a secret, alone or glued (``api_key``, ``apikey``,
#: ``PGPASSWORD``, ``client_secret``, ``X-Amz-Signature``, ``GPG_PASSPHRASE``, ``X-Amz-Credential``), not
#: ``keyword``, ``max_tokens`` or ``tokenizer``.
_SECRET_PART_ENDINGS = ("key", "keys", "token", "secret", "secrets", "password", "passwd", "passphrase", "signature",
                        "credential", "credentials")
#: Words that end in ``key`` and name no key.
_WORDS_ENDING_IN_KEY = frozenset({"monkey", "donkey", "turkey", "hockey", "jockey", "whiskey", "hotkey", "turnkey"})
#: Name parts that name a secret only as the whole part (``auth``, ``auth_method``, ``sig``, ``MYSQL_PWD``,
#: ``DB_PASS``), not ``author``, ``bypass`` or ``signin``.
_SECRET_PARTS = frozenset({"auth", "oauth", "authorization", "authcode", "passcode", "sig", "verifier", "pwd", "pass",
                           "creds", "bearer", "cookie", "cookies"})
#: Parts that make a ``code`` part a credential (``access_code``, ``auth_code``), not ``country_code``.
_CODE_OWNERS = frozenset({"access", "auth", "oauth", "authorization", "verification", "device", "grant"})
#: Parts after a secret part that make the value something about secrets, not one (``key_column``,
#: ``token_count``, ``key_size``).
_ABOUT_PARTS = frozenset({"column", "columns", "col", "field", "fields", "count", "counts", "length", "len", "size",
                          "limit"})
#: First parts of a name that counts things (``num_keys``, ``max_tokens``): it holds a number, not a secret.
_COUNTING_PARTS = frozenset({"num", "n", "max", "min", "total", "count"})
#: A URL parameter that is a secret only as the whole name: OAuth's authorization code, Azure Functions' key
#: (``?code=…``), not ``country_code`` or ``deployment_code``.
_SECRET_URL_PARAMETERS = frozenset({"code"})
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
             if len(value) >= _MIN_SECRET_LENGTH and is_secret_name(name)}
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
def is_secret_name(name: str, also: frozenset[str] = frozenset()) -> bool:
    """Whether a value named ``name`` (an environment variable, a URL parameter, a ``--model-args`` argument, a
    build option) holds a secret: the one vocabulary every redaction uses, by the parts of the name (split at
    ``_``, ``-``, ``.`` and case changes). A part names a secret when it is or ends in ``key``, ``keys``,
    ``token``, ``secret``, ``secrets``, ``password``, ``passwd``, ``passphrase``, ``signature``, ``credential``,
    ``credentials`` (not ``monkey``, ``hotkey`` and the like), or is ``auth``, ``oauth``, ``authorization``,
    ``authcode``, ``passcode``, ``sig``, ``verifier``, ``pwd``, ``pass``, ``creds``, ``bearer``, ``cookie``,
    ``cookies``, or one of ``also`` (a site's own extras: cards add ``salt``); ``code`` beside ``access``,
    ``auth``, ``oauth``, ``authorization``, ``verification``, ``device`` or ``grant``. It does not when a part
    after it says the value is about secrets (``column``, ``field``, ``count``, ``length``, ``size``, ``limit``:
    ``key_column``, ``token_count``), nor in a name that counts (first part ``num``, ``n``, ``max``, ``min``,
    ``total``, ``count``: ``num_keys``). So ``api_key``, ``apiKey``, ``OPENAI_API_KEY``, ``accessToken``,
    ``client_secret_id``, ``MYSQL_PWD``, ``HF_AUTH``, ``GOOGLE_CREDENTIALS``, ``access_code`` are secret-named;
    ``max_tokens``, ``tokenizer``, ``key_column``, ``author``, ``country_code``, ``num_keys``, ``keywords``,
    ``tokens_per_second`` are not."""
    parts = [part.lower() for part in _NAME_PART.findall(name)]
    if not parts or parts[0] in _COUNTING_PARTS:
        return False
    return any(_names_a_secret(part, parts, also) and not _ABOUT_PARTS.intersection(parts[index + 1:])
               for index, part in enumerate(parts))


def _names_a_secret(part: str, parts: list[str], also: frozenset[str]) -> bool:
    if part in _SECRET_PARTS or part in also:
        return True
    if part == "code":
        return bool(_CODE_OWNERS.intersection(parts))
    return part.endswith(_SECRET_PART_ENDINGS) and part not in _WORDS_ENDING_IN_KEY


@functools.lru_cache(maxsize=1024)
def is_secret_parameter(name: str) -> bool:
    """Whether a URL parameter named ``name`` carries a credential: a secret name (:func:`is_secret_name`:
    ``api_key``, ``x-api-key``, ``access_token``, ``sig``, ``X-Amz-Signature``, ``pwd``), and ``code`` as the
    whole name (OAuth's authorization code, an Azure Function's key)."""
    return name.lower() in _SECRET_URL_PARAMETERS or is_secret_name(name)


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
