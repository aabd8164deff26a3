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
#: ``PGPASSWORD``, ``client_secret``, ``X-Amz-Signature``, ``GPG_PASSPHRASE``, ``X-Amz-Credential``, ``DB_PASS``,
#: ``SSHPASS``), not ``keyword``, ``max_tokens``, ``tokenizer`` or ``passthrough``.
_SECRET_PART_ENDINGS = ("key", "keys", "token", "secret", "secrets", "password", "passwd", "passphrase", "signature",
                        "credential", "credentials", "pass")
#: Words that end in ``key`` or ``pass`` and name no secret.
_WORDS_NAMING_NO_SECRET = frozenset({
    "monkey", "donkey", "turkey", "hockey", "jockey", "whiskey", "hotkey", "turnkey",
    "bypass", "compass", "encompass", "surpass", "overpass", "underpass", "trespass", "lowpass", "highpass",
    "bandpass", "allpass", "multipass", "singlepass"})
#: Name parts that name a secret only as the whole part (``auth``, ``auth_method``, ``sig``, ``MYSQL_PWD``), not
#: ``author``, ``signin`` or ``OLDPWD`` (the shell's previous directory).
_SECRET_PARTS = frozenset({"auth", "oauth", "authorization", "authcode", "passcode", "sig", "hmac", "jwt",
                           "verifier", "pwd", "creds", "bearer", "cookie", "cookies"})
#: Parts that make a ``code`` part a credential (``access_code``, ``auth_code``), not ``country_code``.
_CODE_OWNERS = frozenset({"access", "auth", "oauth", "authorization", "verification", "device", "grant"})
#: Parts after a secret part that make the value something about secrets, not one (``key_column``,
#: ``token_count``, ``key_size``, ``key_file``: a path to the key, not the key), or make the name an exception's,
#: whose message follows it (``KeyError: 'title'``,
#: ``ExpiredSignatureError: Signature has expired``), or a reason a credential is wanted (``proxy_auth_required:
#: HTTP 407, ...``, a failure's text).
_ABOUT_PARTS = frozenset({"column", "columns", "col", "field", "fields", "count", "counts", "length", "len", "size",
                          "limit", "error", "errors", "exception", "warning", "file", "files", "path", "paths",
                          "dir", "filename", "required"})
#: Parts before a ``key`` part that make it a database's or a sort's key, not a credential (``primary_key: asin``,
#: ``sort_keys=True``, ``cache_key``); ``api_key`` and ``private_key`` stay secret.
_KEY_KINDS_NAMING_NO_SECRET = frozenset({"primary", "foreign", "sort", "partition", "cache", "row", "join", "lookup"})
#: Parts after a ``token`` part that make it a tokenizer's token or OAuth's token kind, not a credential
#: (``pad_token_id=0``, ``token_type_ids``, ``"token_type": "Bearer"``); ``AWS_ACCESS_KEY_ID`` stays secret.
_TOKEN_ABOUT_PARTS = frozenset({"id", "ids", "type", "types"})
#: First parts of a name that counts things (``num_keys``, ``max_tokens``): it holds a number, not a secret.
_COUNTING_PARTS = frozenset({"num", "n", "max", "min", "total", "count"})
#: A URL parameter that is a secret only as the whole name: OAuth's authorization code, Azure Functions' key
#: (``?code=…``), not ``country_code`` or ``deployment_code``; a CloudFront signed URL's ``Policy`` (the grant its
#: ``Signature`` signs), not ``retry_policy``; an Akamai token (``hdnts``, ``hdnea``, ``hdntl``: ``exp=…~acl=…~hmac=…``,
#: often percent-encoded, where its ``hmac=`` is no field to redact by its name).
_SECRET_URL_PARAMETERS = frozenset({"code", "policy", "hdnts", "hdnea", "hdntl"})
#: An Akamai token as a path segment of its own (``/hdnts=exp=…~acl=/*~hmac=…/image.jpg``), its value (percent-encoded
#: or not) up to the URL's end or next ``&``, ``#``, quote or space, as a secret URL parameter's (``_SECRET_VALUE``).
_AKAMAI_PATH_TOKEN = re.compile(r"(?<=/)(?P<name>hdnts|hdnea|hdntl)=[^&#\s\"'<>]+", re.IGNORECASE)
#: A URL nested percent-encoded in another's value (a proxy's or a redirect's ``?url=https%3A%2F%2F…``, ``%25``
#: more for each further level): a parameter after its encoded ``?``, ``&``, ``;`` or ``#`` (an Akamai token
#: after its ``/`` too), ``name`` and the ``=``, all encoded alike (``level`` is the ``25`` of each level past the
#: first). Its value is what the next ``&``, ``#`` of its level or an outer one, quote or space leaves.
_ENCODED_URL_PARAMETER = re.compile(
    r"%(?P<level>(?:25)*)(?P<separator>3F|26|3B|23|2F)(?P<name>[\w.~-]+)%(?P=level)3D", re.IGNORECASE)
_AKAMAI_TOKEN_NAMES = frozenset({"hdnts", "hdnea", "hdntl"})
#: The ``user:password@`` of a nested URL: after its encoded ``//``, up to the last encoded ``@`` of its level
#: before its encoded ``/``, ``?`` or ``#`` (of any level), quote or space.
_ENCODED_URL_USERINFO = re.compile(
    r"(?P<slashes>%(?P<level>(?:25)*)2F%(?P=level)2F)"
    r"(?:[^%/?#\s\"'<>@]|%(?!(?:25)*(?:2F|3F|23))[0-9A-F]{2})*%(?P=level)40", re.IGNORECASE)
#: A field shown as a header (``Authorization: Bearer ...``, ``Cookie: ...``), a JSON / dict / YAML entry
#: (``"passphrase": "..."``, ``'authorization': 'Basic ...'``, ``client_secret: ...``) or ``name=value``
#: (``MYSQL_PWD=...``, ``--api-key=...``): its name, the separator (``==`` and ``:=`` are code, not one) and the
#: scheme a credential's value may start with. Whether the name holds a secret is :func:`is_secret_name`'s to say.
_FIELD_HEAD = re.compile(
    r"(?<![\w.-])(?P<name>[\w.-]+)(?P<separator>[\"']?[ \t]*(?::(?![:=])|=(?!=))[ \t]*(?P<quote>[\"'])?)"
    r"(?P<scheme>(?:basic|bearer|token|digest|negotiate|ntlm)\s+)?", re.IGNORECASE)
#: A field's value: a known secret's marker, or all of a quoted value (to its closing quote), or an unquoted one up
#: to a space, quote, ``,``, ``;``, ``&``, ``#``, ``}``, ``]`` or ``<``, and before a ``)`` it did not open (the
#: call's: ``OpenAI(api_key=...)``, ``(key: OPENAI_API_KEY)``).
_FIELD_VALUE = {
    None: re.compile(r"<(?:[^<>\s]+ )?redacted>|[^\s\"',;&#}\]<>]+"),
    '"': re.compile(r'<(?:[^<>\s]+ )?redacted>(?=")|(?:\\.|[^"\\\n])+'),
    "'": re.compile(r"<(?:[^<>\s]+ )?redacted>(?=')|(?:\\.|[^'\\\n])+"),
}
#: A ``Cookie`` header's value goes on past ``; `` to the next cookie (``Cookie: a=1; session=...``) and a
#: ``Set-Cookie``'s to its attributes.
_MORE_COOKIES = re.compile(r"(?:;[ \t]*[^\s\"',;&#}\]<>]+)*")
#: Values that say a secret is missing, not what it is (``api_key=None``): shown, as they help find the problem.
_NO_VALUES = frozenset({"none", "null", "nil", "undefined", "true", "false"})
#: A one-word name (``password``, ``Token``, ``key``) opens sentences too ("password: must be ...", "the key: press
#: enter"); a name with parts (``api_key``, ``X-Api-Key``) does not.
_WORD_NAME = re.compile(r"[A-Za-z][a-z]*")
#: A count a sentence goes on after ("token: 3 of 5"): no secret is 3 digits long.
_PROSE_COUNT = re.compile(r"[0-9]{1,3}")
#: Code in a traceback's source line, not a secret (a secret written in the code is quoted): a call or subscript
#: (``token = tokenizer(text)``, ``key = os.environ["OPENAI_API_KEY"]``), a lambda (``sorted(runs, key=lambda r:
#: ...)``), a list, tuple or dict (``keys = [...]``), an f-string or other prefixed string (``key = f"..."``), a
#: type (``key: str``).
_CODE_EXPRESSION = re.compile(r"[A-Za-z_][\w.]*[(\[]|lambda\b|[\[({]|[A-Za-z]{1,2}[\"']"
                              r"|(?:str|int|float|bool|bytes|dict|list|tuple|set|object|Any|Path)(?![\w.-])")
#: An Arrow type after ``name: `` (a field of a schema that pyarrow or ``datasets`` print in an error:
#: ``struct<key: string, value: int64>``, ``CastError: ... key: large_string``); a nested type before its ``<``.
_ARROW_TYPE = re.compile(r"(?:large_)?(?:string|utf8|binary)|(?:string|binary)_view|u?int(?:8|16|32|64)"
                         r"|float(?:16|32|64)?|halffloat|double|bool|date(?:32|64)"
                         r"|(?:(?:large_)?list|list_view|struct|map|dictionary)(?=<)")
#: A variable after a quoted name (``{"key": key}``, ``{'token': self.token}``): JSON and Python's reprs quote
#: every text, so an unquoted word there is code.
_VARIABLE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
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

#: Environment variables the shell sets whose names read as secret: ``PWD`` is the working directory (``pwd``
#: names a password elsewhere), whose path every error about a file under it quotes.
_SHELL_VARIABLES = frozenset({"PWD"})
#: Besides the secret names: a salt in the environment (``REDDIT_AMAZON_SALT``, the pseudonyms' key, whose value
#: turns every pseudonym back into a user name by trying names) is secret wherever a text quotes it.
_ENVIRONMENT_SECRET_PARTS = frozenset({"salt"})

REDACTED = "<redacted>"


def redact_secrets(text: str, *secrets: str | None) -> str:
    """``text`` without ``secrets``, the values of secret-named environment variables, or any credential it shows.

    A known secret is replaced in every form an endpoint can echo it in: as given, percent-encoded (any case, any
    mix of encoded and plain characters, encoded twice), JSON-escaped, and inside base64 (alone or within
    ``user:secret``). Whatever the secret, the credentials a text shows by their shape go too: a URL's
    ``user:password@``, secret-named URL parameters (query, ``;`` path parameters, fragment; an Akamai token as a
    path segment: ``/hdnts=…``), also of a URL nested percent-encoded in another's value (``?url=https%3A%2F%2F…``,
    once or twice: :func:`redact_url_credentials`), the value of a
    secret-named field or header (:func:`redact_fields`: ``Authorization``, ``Cookie``, ``"passphrase": ...``) and
    of a ``Bearer`` / ``Basic`` credential."""
    known = {value: f"<{name} redacted>" for name, value in os.environ.items()
             if len(value) >= _MIN_SECRET_LENGTH and is_secret_name(name, also=_ENVIRONMENT_SECRET_PARTS)
             and name not in _SHELL_VARIABLES}
    for secret in secrets:  # one from the environment keeps the name of its variable
        if secret and len(secret) >= _MIN_SECRET_LENGTH:
            known.setdefault(secret, "<key redacted>")
    for secret, marker in sorted(known.items(), key=lambda item: -len(item[0])):  # a longer one holding another
        text = _any_encoding(secret).sub(marker, text)
    if known:
        text = _BASE64_RUN.sub(lambda run: _base64_holding(run[0], known) or run[0], text)
    text = redact_url_credentials(text)  # first: a URL's value runs past a ";", a field's (password=a;b) does not
    text = redact_fields(text)
    return _SCHEME_CREDENTIAL.sub(_redacted_scheme_credential, text)


def redact_url_credentials(text: str) -> str:
    """``text`` without the credentials of the URLs in it, also of a URL nested percent-encoded in another's
    value (``?url=https%3A%2F%2F…%3Ftoken%3D…``, or encoded twice), its encoding kept: ``user:password@``,
    secret-named parameters (:func:`redact_url_parameters`) and an Akamai token as a path segment (``/hdnts=…``)."""
    text = URL_USERINFO.sub("<credentials redacted>@", text)
    if "%" in text:  # the usual line has no nested URL: one look for a "%" spares it the patterns
        text = _ENCODED_URL_USERINFO.sub(r"\g<slashes><credentials redacted>%\g<level>40", text)
    text = redact_url_parameters(text)
    return _AKAMAI_PATH_TOKEN.sub(rf"\g<name>={REDACTED}", text)


def redact_url_parameters(text: str) -> str:
    """``text`` with the value of each secret-named URL parameter (:func:`is_secret_parameter`) redacted:
    ``name=value`` after a ``?`` / ``&`` (query), ``;`` (path parameter) or ``#`` (fragment), the value up to the
    next ``&``, ``#``, quote or space (a ``;`` or ``?`` does not end it). A parameter with no value holds no
    secret. The parameters of a URL nested percent-encoded in a value are redacted too, the ``=`` before
    ``<redacted>`` encoded as it was (``%3Ftoken%3D<redacted>%26w%3D100``)."""
    shown, end = [], 0
    for parameter in _URL_PARAMETER.finditer(text):
        if parameter.start() < end or not is_secret_parameter(parameter["name"]):
            continue  # inside a value just redacted, or no secret
        value_end = _match_end(_SECRET_VALUE, text, parameter.start("value"))
        if value_end > parameter.start("value"):
            shown += [text[end:parameter.start("value")], REDACTED]
            end = value_end
    text = "".join(shown) + text[end:]
    return _redacted_encoded_url_parameters(text) if "%" in text else text


def _redacted_encoded_url_parameters(text: str) -> str:
    """``text`` with the secret-named parameters of the URLs nested percent-encoded in it redacted (an Akamai
    token as a path segment too): each value up to the next ``&`` or ``#`` of its level or an outer one (an inner
    level's is part of the value), or a quote or space."""
    shown, end = [], 0
    for parameter in _ENCODED_URL_PARAMETER.finditer(text):
        name, is_path_segment = parameter["name"], parameter["separator"].upper() == "2F"
        if parameter.start() < end or not (name.lower() in _AKAMAI_TOKEN_NAMES if is_path_segment
                                           else is_secret_parameter(name)):
            continue  # inside a value just redacted, or no secret
        following = _encoded_value_end(len(parameter["level"]) // 2).search(text, parameter.end())
        value_end = following.start() if following else len(text)
        if value_end > parameter.end():
            shown += [text[end:parameter.end()], REDACTED]
            end = value_end
    return "".join(shown) + text[end:]


@functools.lru_cache(maxsize=8)
def _encoded_value_end(level: int) -> re.Pattern[str]:
    """What ends the value of a parameter encoded ``level`` + 1 times: an ``&`` or ``#`` encoded as many times or
    fewer (its own URL's or an outer one's), an unencoded one, a quote or space."""
    return re.compile(rf"[&#\s\"'<>]|%(?:25){{0,{level}}}(?:26|23)")


@functools.lru_cache(maxsize=1024)
def is_secret_name(name: str, also: frozenset[str] = frozenset()) -> bool:
    """Whether a value named ``name`` (an environment variable, a URL parameter, a ``--model-args`` argument, a
    build option) holds a secret: the one vocabulary every redaction uses, by the parts of the name (split at ``_``,
    ``-``, ``.`` and case changes). A part names a secret when it is or ends in ``key``, ``keys``, ``token``,
    ``secret``, ``secrets``, ``password``, ``passwd``, ``passphrase``, ``signature``, ``credential``,
    ``credentials``, ``pass`` (not ``monkey``, ``hotkey``, ``bypass``, ``compass`` and the like), or is ``auth``,
    ``oauth``, ``authorization``, ``authcode``, ``passcode``, ``sig``, ``hmac``, ``jwt``, ``verifier``, ``pwd``,
    ``creds``, ``bearer``, ``cookie``, ``cookies``, or one of ``also`` (a site's own extras: cards add ``salt``);
    ``code`` beside ``access``, ``auth``, ``oauth``, ``authorization``, ``verification``, ``device`` or ``grant``.
    It does not when a part after it says the value is about secrets (``column``, ``field``, ``count``, ``length``,
    ``size``, ``limit``: ``key_column``, ``token_count``; ``file``, ``path``, ``dir``: ``key_file``, a path to the
    key; ``required``: ``proxy_auth_required``, a failure's reason) or a part before a ``key`` says it is a database's or a sort's (``primary``, ``foreign``, ``sort``,
    ``partition``, ``cache``, ``row``, ``join``, ``lookup``: ``primary_key``) or the name is an exception's
    (``error``, ``exception``, ``warning``: ``KeyError``), nor in a name that counts (first part ``num``, ``n``,
    ``max``, ``min``, ``total``, ``count``: ``num_keys``). So ``api_key``, ``apiKey``, ``OPENAI_API_KEY``,
    ``accessToken``, ``client_secret_id``, ``MYSQL_PWD``, ``SSHPASS``, ``HF_AUTH``, ``GOOGLE_CREDENTIALS``,
    ``access_code`` are secret-named; ``max_tokens``, ``tokenizer``, ``key_column``, ``author``, ``country_code``,
    ``num_keys``, ``keywords``, ``tokens_per_second``, ``KeyError`` are not."""
    parts = [part.lower() for part in _NAME_PART.findall(name)]
    if not parts or parts[0] in _COUNTING_PARTS:
        return False
    return any(_names_a_secret(part, parts, also) and not _named_about_something_else(index, parts)
               for index, part in enumerate(parts))


def _named_about_something_else(index: int, parts: list[str]) -> bool:
    """Whether the parts around ``parts[index]`` make it name something about a secret, not one: ``key_column``,
    ``KeyError``, ``pad_token_id``, ``primary_key``."""
    part, after = parts[index], parts[index + 1:]
    if _ABOUT_PARTS.intersection(after):
        return True
    if part in ("token", "tokens"):
        return bool(_TOKEN_ABOUT_PARTS.intersection(after))
    return part in ("key", "keys") and index > 0 and parts[index - 1] in _KEY_KINDS_NAMING_NO_SECRET


def _names_a_secret(part: str, parts: list[str], also: frozenset[str]) -> bool:
    if part in _SECRET_PARTS or part in also:
        return True
    if part == "code":
        return bool(_CODE_OWNERS.intersection(parts))
    return part.endswith(_SECRET_PART_ENDINGS) and part not in _WORDS_NAMING_NO_SECRET


@functools.lru_cache(maxsize=1024)
def is_secret_parameter(name: str) -> bool:
    """Whether a URL parameter named ``name`` carries a credential: a secret name (:func:`is_secret_name`:
    ``api_key``, ``x-api-key``, ``access_token``, ``sig``, ``X-Amz-Signature``, ``pwd``, Akamai's ``__token__``),
    and ``code``, ``Policy``, ``hdnts``, ``hdnea`` and ``hdntl`` as the whole name (OAuth's authorization code, an
    Azure Function's key, a CloudFront grant, an Akamai token)."""
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


def redact_fields(text: str) -> str:
    """``text`` with the value of each secret-named field (:func:`is_secret_name`) redacted, its name, separator and
    scheme kept: a header, a JSON / dict / YAML entry or ``name=value``. A value already redacted, one that says
    the secret is missing (``None``, ``null``), code in a traceback's source line (``key=lambda r: ...``,
    ``key=key``, ``self.key = key``, ``api_key=key``), an Arrow type in a printed schema (``key: string``), and
    the words of a sentence after a one-word name and an unquoted ``:`` (``password: must be at least 8
    characters``, ``token: 3 of 5``) are left as they are."""
    shown, end = [], 0
    for head in _FIELD_HEAD.finditer(text):
        if head.start() < end or not is_secret_name(head["name"]):
            continue  # inside a value just redacted, or no secret
        value = _FIELD_VALUE[head["quote"]].match(text, head.end())
        if value is not None and not head["quote"]:
            end_of_value = _end_before_unopened_parentheses(value)
            if end_of_value < value.end():  # a call's ")" after it: matched again without, rarely
                value = _FIELD_VALUE[None].match(text, head.end(), end_of_value)
        if value is None or _is_left_as_shown(head, value):
            continue
        value_end = value.end()
        if not head["quote"] and _is_cookie_name(head["name"]):
            value_end = _match_end(_MORE_COOKIES, text, value_end)
        shown += [text[end:value.start()], REDACTED]
        end = value_end
    return "".join(shown) + text[end:]


def _match_end(pattern: re.Pattern[str], text: str, start: int) -> int:
    """Where ``pattern``, one that matches the empty string too (so always matches), ends from ``start``."""
    match = pattern.match(text, start)
    assert match is not None
    return match.end()


def _end_before_unopened_parentheses(value: re.Match[str]) -> int:
    """Where an unquoted ``value`` ends without the ``)`` at its end that it did not open."""
    end, unopened = value.end(), value[0].count(")") - value[0].count("(")
    while unopened > 0 and value.string[end - 1] == ")":
        end, unopened = end - 1, unopened - 1
    return end


def _is_left_as_shown(head: re.Match[str], value: re.Match[str]) -> bool:
    word = value[0]
    if _MARKER.fullmatch(word) or word.lower() in _NO_VALUES or word == head["name"]:  # "key": "key" too
        return True
    if not head["quote"] and (_CODE_EXPRESSION.match(value.string, value.start()) or _is_passed_on(word, head["name"])
                              or (head["separator"][0] in "\"'" and _VARIABLE.fullmatch(word))):
        return True
    unquoted_colon = ":" in head["separator"] and not {'"', "'"} & set(head["separator"])
    arrow_type = _ARROW_TYPE.match(value.string, value.start())
    if unquoted_colon and not head["scheme"] and arrow_type and arrow_type.end() == value.end():
        return True
    return (unquoted_colon and not head["scheme"] and bool(_WORD_NAME.fullmatch(head["name"]))
            and _reads_as_prose(value, 0, also=_PROSE_COUNT))


def _is_passed_on(value: str, name: str) -> bool:
    """``value`` is a variable that code passes on under (part of) its own name: ``key=key``, ``self.key = key``,
    ``key=upstream.key``, ``api_key=key``, ``self.key = api_key``, ``token=self._token``."""
    if not _VARIABLE.fullmatch(value):
        return False
    shorter, longer = sorted((name.rsplit(".", 1)[-1], value.rsplit(".", 1)[-1]), key=len)
    return longer == shorter or longer.endswith("_" + shorter)


def _is_cookie_name(name: str) -> bool:
    return _NAME_PART.findall(name)[-1].lower() in ("cookie", "cookies")


def _reads_as_prose(match: re.Match[str], group: str | int, also: re.Pattern[str] | None = None) -> bool:
    """The ``group`` of ``match`` is a word (or hyphenated words; or what ``also`` matches) that a sentence goes on
    after."""
    is_word = _PROSE_WORDS.fullmatch(match[group]) or (also is not None and also.fullmatch(match[group]))
    return bool(is_word and _SENTENCE_GOES_ON.match(match.string, match.end(group)))


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
