"""An endpoint echoing the key in any form (percent-encoded, base64, in a URL, in an Authorization header) never
gets it into a console line, a log record or a file: through the build's relevance filter and `benchmark run
--model openai-chat`, against a loopback endpoint that quotes back the key it was sent."""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from werkzeug import Request, Response

from reddit_amazon.redaction import redact_secrets

KEY = "sk-live-QZ7xW2/Kp9+Rt4=Vb8_Hm3Nc"  # '/', '+', '=': its percent-encoded form differs from it


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def percent_encoded(key: str, lower_hex: bool = False) -> str:
    encoded = quote(key, safe="")
    return re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), encoded) if lower_hex else encoded


def forms_of(key: str) -> list[str]:
    """The forms an endpoint may echo ``key`` in: none of them may be shown or written."""
    return [key, percent_encoded(key), percent_encoded(key, lower_hex=True), quote(quote(key, safe=""), safe=""),
            b64(key), base64.urlsafe_b64encode(key.encode()).decode().rstrip("="), b64(f"user:{key}"),
            key.replace("/", "\\/")]


def echo(key: str) -> str:
    """An error message quoting ``key`` in each of its forms, as a hostile or misconfigured endpoint may."""
    twice_encoded, url_safe = quote(quote(key, safe=""), safe=""), base64.urlsafe_b64encode(key.encode()).decode()
    return (f"rejected POST /v1/chat/completions;api_key={percent_encoded(key)} (also tried "
            f"https://user:{key}@gateway.invalid/v1?api_key={key}&key={percent_encoded(key, lower_hex=True)}"
            f"#access_token={twice_encoded}); headers: Authorization: Basic {b64('user:' + key)}, "
            f"Authorization: Bearer {key}; the key as base64: {b64(key)}, URL-safe: {url_safe.rstrip('=')}; "
            f"as JSON: {json.dumps(key).replace('/', chr(92) + '/')}")


def assert_never_shown(key: str, text: str, where: str) -> None:
    shown = [form for form in forms_of(key) if form in text]
    assert not shown, f"{where} shows the key as {shown}"
    pieces = [key[i:i + 8] for i in range(len(key) - 7)]  # a key cut short (a message truncated) is shown too
    assert not [piece for piece in pieces if piece in text], f"{where} shows part of the key"


def assert_no_file_holds(key: str, *folders: Path) -> None:
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        shown = [form for form in forms_of(key) if form.encode() in data]
        assert not shown, f"{path} holds the key as {shown}"


@pytest.mark.parametrize("form", forms_of(KEY))
def test_a_known_key_is_redacted_in_every_form(form):
    assert_never_shown(KEY, redact_secrets(f"endpoint said: {form}.", KEY), form)
    assert redact_secrets(f"endpoint said: {form}.", KEY) == "endpoint said: <key redacted>."


def test_an_environment_secret_is_redacted_in_every_form(monkeypatch):
    token = "hf_QZ7xW2Kp9Rt4Vb8Hm3Nc+/x"
    monkeypatch.setenv("HF_TOKEN", token)
    shown = redact_secrets(f"echoed {percent_encoded(token)} and {b64(token)} and {b64('me:' + token)}")
    assert_never_shown(token, shown, "the text")
    assert shown.count("<HF_TOKEN redacted>") == 3


@pytest.mark.parametrize("text, credential", [
    ("POST /v1/chat/completions;api_key=unknown-Zq81x failed", "unknown-Zq81x"),
    ("POST /v1/chat/completions?api_key=unknown-Zq81x failed", "unknown-Zq81x"),
    ("at https://h.invalid/v1/chat?x=1&key=unknown-Zq81x", "unknown-Zq81x"),
    ("redirected to https://h.invalid/cb#access_token=unknown-Zq81x&type=bearer", "unknown-Zq81x"),
    ("at http://alice:unknown-Zq81x@h.invalid/v1", "unknown-Zq81x"),
    ("Authorization: Basic " + b64("alice:unknown-Zq81x"), b64("alice:unknown-Zq81x")),
    ("Basic " + b64("alice:unknown-Zq81x") + " was refused", b64("alice:unknown-Zq81x")),
    ("{'authorization': 'Bearer unknown-Zq81x'}", "unknown-Zq81x"),
    ('{"x-api-key": "unknown-Zq81x"}', "unknown-Zq81x"),
    ("token rejected: Bearer unknown-Zq81x", "unknown-Zq81x"),
    ("GET /v1/models;token=unknown-Zq81x failed", "unknown-Zq81x"),
    ("redirected to https://h.invalid/cb#code=unknown-Zq81x&state=1", "unknown-Zq81x"),
    ("at https://acct.blob.core.windows.net/c/b?sv=2024-08-04&sig=unknown-Zq81x%2B", "unknown-Zq81x"),
    ("headers: Ocp-Apim-Subscription-Key: unknown-Zq81x", "unknown-Zq81x"),
])
def test_credentials_are_redacted_by_their_shape_when_the_key_is_unknown(text, credential):
    shown = redact_secrets(text)
    assert credential not in shown and "redacted" in shown, shown


@pytest.mark.parametrize("text", [
    "Basic authentication failed", "Bearer token missing", "Bearer authentication is required",
    "model does not accept max_new_tokens=5 or {'max_tokens': 4}", "see https://host.invalid/a@b?x=1&model=m",
    "gpt-4o-mini: cache_dir=/tmp/x", "Incorrect API key provided",
    "https://h.invalid/search?key=&page=2",  # an empty key is shown as empty: the problem may be that it is
    # a failure's reason (image_error, a short link's error, the run log's line) is not a credential named "auth"
    "unreachable: proxy_auth_required: HTTP 407, the proxy asks for credentials",
])
def test_ordinary_text_is_left_alone(text):
    assert redact_secrets(text) == text


def test_the_pseudonym_salt_of_the_environment_is_redacted(monkeypatch):
    """REDDIT_AMAZON_SALT (the key of the author pseudonyms) was no secret name: a bug's traceback on the terminal,
    which the run log's redaction of the salt does not reach, showed it."""
    monkeypatch.setenv("REDDIT_AMAZON_SALT", "pepper-1234567890")
    assert redact_secrets("salt pepper-1234567890 refused") == "salt <REDDIT_AMAZON_SALT redacted> refused"


def test_only_secret_named_environment_variables_of_8_characters_or_more_are_redacted(monkeypatch):
    monkeypatch.setenv("DATASET_HOME", "/srv/datasets/reddit-amazon")
    monkeypatch.setenv("HF_HUB_DISABLE_TOKEN", "1")
    text = "3 of 17 items failed under /srv/datasets/reddit-amazon/images"
    assert redact_secrets(text, "1", "17") == text


def test_the_working_directory_the_shell_sets_as_pwd_is_shown(monkeypatch, tmp_path):
    """``PWD`` is a secret name (``pwd``) but the shell's working directory as a variable: the paths of files
    under it, which errors name, are shown."""
    monkeypatch.setenv("PWD", str(tmp_path))
    text = f"Error: FileNotFoundError: {tmp_path / 'inputs' / 'RS_2023-01.zst'} does not exist"
    assert redact_secrets(text) == text


def test_an_environment_secret_keeps_its_name_when_also_given(monkeypatch):
    token = "hf_QZ7xW2Kp9Rt4Vb8Hm3Nc"
    monkeypatch.setenv("HF_TOKEN", token)
    assert redact_secrets(f"echoed {token}", token) == "echoed <HF_TOKEN redacted>"


def test_a_secret_that_extends_another_is_redacted_whole():
    project_key, key = "sk-proj-QZ7xW2Kp9", "sk-proj-QZ7xW2Kp9-Rt4Vb8Hm3Nc"
    for secrets in ((project_key, key), (key, project_key)):
        shown = redact_secrets(f"rejected {key}", *secrets)
        assert shown == "rejected <key redacted>", shown


def test_a_secret_with_spaces_is_redacted_form_encoded():
    from urllib.parse import quote_plus

    password = "correct horse battery staple"
    assert redact_secrets(f"body: user=alice&pw={quote_plus(password)}", password) == \
        "body: user=alice&pw=<key redacted>"


def test_a_non_ascii_secret_is_redacted_inside_base64():
    password = "pässwörd-Zq81x"
    assert redact_secrets(f"Authorization header was {b64('alice:' + password)}", password) == \
        "Authorization header was <key redacted>"


KEY_WITH_URL_SAFE_BASE64 = "sk-test-~~~???-Zq81x-abcdefghi"  # 30 bytes: its base64 has '+' and '/' and no '='


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
@pytest.mark.parametrize("before, after", [("\\n", ""), ("", "\\n"), ("", "x"), ("ab", "x"), ("ab", "xyz")])
def test_base64_glued_to_other_characters_is_redacted(encode, before, after):
    encoded = encode(KEY_WITH_URL_SAFE_BASE64.encode()).decode()
    shown = redact_secrets(f'"detail": "{before}{encoded}{after}"', KEY_WITH_URL_SAFE_BASE64)
    assert encoded not in shown and "<key redacted>" in shown, shown


def hostile_llm(answer: str):
    """Answers every other request (the first included) with ``answer``; refuses the others as content-filtered,
    the message quoting back the key of the request's Authorization header in every form."""
    requests = []

    def handle(request: Request) -> Response:
        requests.append(request)
        key = request.headers["Authorization"].removeprefix("Bearer ")
        if len(requests) % 2 == 0:
            error = {"message": echo(key), "type": "invalid_request_error", "param": None, "code": "content_filter"}
            return Response(json.dumps({"error": error}), status=400, content_type="application/json")
        body = json.loads(request.data)
        return Response(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": answer}}]}),
                        content_type="application/json")

    return handle


def failing_llm(status: int, message: str):
    def handle(request: Request) -> Response:
        return Response(json.dumps({"error": {"message": message, "type": "server_error"}}), status=status,
                        content_type="application/json")

    return handle


def test_the_relevance_filter_in_a_build_never_shows_or_writes_an_echoed_key(httpserver, tmp_path, caplog):
    from reddit_amazon.cli import cli

    caplog.set_level(logging.INFO)
    work, env = tmp_path / "work", {"OPENAI_API_KEY": KEY}

    def build(model: str, out: str):
        return CliRunner().invoke(cli, ["build", "--out", str(tmp_path / out), "--workdir", str(work),
                                        "--llm-model", model, "--llm-base-url", httpserver.url_for("/v1"),
                                        "--llm-concurrency", "1", "--llm-max-attempts", "1", "--no-images",
                                        "--retrievers", "none"], env=env, catch_exceptions=False)

    httpserver.expect_request("/v1/chat/completions").respond_with_handler(hostile_llm("Yes."))
    refusing = build("refuses-some", "ds")  # half the prompts refused: the reasons go to the answer cache
    assert refusing.exit_code == 0, refusing.output
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["build_reports"]["relevance"]["labels"][
        "rejected"] > 0
    httpserver.clear()
    httpserver.expect_request("/v1/chat/completions").respond_with_handler(failing_llm(401, echo(KEY)))
    unauthorised = build("unauthorised", "ds401")
    assert unauthorised.exit_code == 1 and "rejected POST" in unauthorised.output
    httpserver.clear()
    # The error is cut to 300 characters: a key the cut falls inside must be redacted before, not after.
    httpserver.expect_request("/v1/chat/completions").respond_with_handler(failing_llm(500, KEY * 12))
    down = build("down", "ds500")
    assert down.exit_code == 1 and "rerun to resume" in down.output
    for result in (refusing, unauthorised, down):
        assert_never_shown(KEY, result.output, "the console")
    assert_never_shown(KEY, caplog.text, "the log")
    assert_no_file_holds(KEY, tmp_path / "ds", work)


def test_openai_chat_never_shows_or_writes_an_echoed_key(httpserver, tmp_path, caplog):
    from benchmark.cli import cli
    from benchmark.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(tmp_path / "synthetic", records_per_domain=4, items_per_domain=30)
    caplog.set_level(logging.INFO)

    def run(out: str):
        return CliRunner().invoke(cli, ["run", "--model", "openai-chat", "--model-args",
                                        f"base_url={httpserver.url_for('/v1')},cache_dir={tmp_path / 'cache'},"
                                        "max_workers=1,max_retries=1", "--dataset", str(dataset),
                                        "--out", str(tmp_path / out), "--quiet", "--bootstrap-samples", "0"],
                                  env={"OPENAI_API_KEY": KEY})

    httpserver.expect_request("/v1/chat/completions").respond_with_handler(hostile_llm("no idea"))
    refusing = run("refusing")  # refused answers are scored invalid, their reasons logged
    assert refusing.exit_code == 0, refusing.output
    assert "scored as an invalid answer" in caplog.text
    httpserver.clear()
    httpserver.expect_request("/v1/chat/completions").respond_with_handler(failing_llm(401, echo(KEY)))
    unauthorised = run("unauthorised")
    assert unauthorised.exit_code == 1 and "AuthenticationError" in unauthorised.output
    for result in (refusing, unauthorised):
        assert_never_shown(KEY, result.output, "the console")
    assert_never_shown(KEY, caplog.text, "the log")
    assert_no_file_holds(KEY, tmp_path / "refusing", tmp_path / "cache")


@pytest.mark.parametrize("url, shown", [
    ("http://h/v1;api_key=sk-SECRET", "http://h/v1;api_key=<redacted>"),
    ("http://h/v1?x=1#access_token=SECRET", "http://h/v1?x=1#access_token=<redacted>"),
    ("http://h/a;token=SECRET/v1/", "http://h/a;token=<redacted>/v1"),  # the value ends at its segment's "/"
    ("http://h:99999/v1;sig=SECRET?key=x#y", "http://h:99999/v1;sig=<redacted>"),  # a bad port: no query, no fragment
    ("http://h/a&token=SECRET;v=2/v1", "http://h/a&token=<redacted>;v=2/v1"),
    # an Akamai token as a segment of its own, or a path parameter: its acl's "/" does not end it, its hmac does
    ("https://cdn.example/hdnts=exp=1767225600~acl=/*~hmac=0f3c9a1b2d/p/1.jpg",
     "https://cdn.example/hdnts=<redacted>/p/1.jpg"),
    ("https://cdn.example/p;hdnea=exp=1767225600~acl=/p/*~hmac=0f3c9a1b2d/1.jpg", "https://cdn.example/p;hdnea=<redacted>/1.jpg"),
    ("https://cdn.example/__token__=st=1~exp=1767225600~acl=/p/*!/q/*~hmac=0f3c9a1b2d/p/1.jpg",
     "https://cdn.example/__token__=<redacted>/p/1.jpg"),
    ("https://cdn.example/hdntl=exp%3D1767225600%7Eacl%3D%2F*%7Ehmac%3D0f3c9a1b2d/p/1.jpg",
     "https://cdn.example/hdntl=<redacted>/p/1.jpg"),
    # those of a URL nested percent-encoded in a query value or the fragment
    ("http://h/v1?w=1&next=https%3A%2F%2Fcdn.example%2Fimg.jpg%3Ftoken%3Dsecretvalue%26w%3D100",
     "http://h/v1?w=1&next=https%3A%2F%2Fcdn.example%2Fimg.jpg%3Ftoken%3D%3Credacted%3E%26w%3D100"),
    ("http://h/v1?next=https%3A%2F%2Fuser%3Asecretvalue%40cdn.example%2Fimg.jpg",
     "http://h/v1?next=https%3A%2F%2F%3Ccredentials+redacted%3E%40cdn.example%2Fimg.jpg"),
    ("http://h/v1#next=https%3A%2F%2Fcdn.example%2Fimg.jpg%3Fhdnts%3Dexp%3D1~acl%3D%2F*~hmac%3Dsecretvalue",
     "http://h/v1#next=https%3A%2F%2Fcdn.example%2Fimg.jpg%3Fhdnts%3D<redacted>"),
    ("http://h/v1#next=https%3A%2F%2Fuser%3Asecretvalue%40cdn.example%2Fimg.jpg",
     "http://h/v1#next=https%3A%2F%2F<credentials redacted>%40cdn.example%2Fimg.jpg"),
])
def test_an_endpoint_url_is_written_without_path_parameter_or_fragment_credentials(url, shown):
    from reddit_amazon.openai_endpoint import display_url, has_credentials

    assert display_url(url) == shown and has_credentials(url)


@pytest.mark.parametrize("url", ["http://h/v1;v=2", "http://h/v1#section", "http://h/v1;api_key=#access_token=",
                                 "http://h/w=500/v1;v=2", "http://h/v1/hdnts="])
def test_an_endpoint_url_without_credentials_is_written_as_given(url):
    from reddit_amazon.openai_endpoint import display_url, has_credentials

    assert display_url(url) == url and not has_credentials(url)


@pytest.mark.parametrize("name", ["api_key", "apiKey", "apikey", "x-api-key", "key", "access_token", "accessToken",
                                  "hf_token", "client_secret", "password", "sig", "X-Amz-Signature", "code", "auth",
                                  "auth_method", "oauth_signature", "subscription-key", "access_code", "auth_code",
                                  "code_verifier", "apikeys", "client_secrets", "jwt", "hmac", "X-Jwt-Assertion",
                                  # signed image URLs: S3, CloudFront, GCS, Azure SAS
                                  "X-Amz-Credential", "Signature", "Policy", "Key-Pair-Id", "X-Goog-Signature",
                                  "X-Goog-Credential", "hdnts", "hdnea", "hdntl", "__token__", "HDNTS"])  # Akamai
def test_a_parameter_named_for_a_secret_is_secret(name):
    from reddit_amazon.redaction import is_secret_parameter

    from reddit_amazon.openai_endpoint import endpoint_key

    assert is_secret_parameter(name)
    assert redact_secrets(f"GET /v1?{name}=value-1") == f"GET /v1?{name}=<redacted>"
    # a rotated secret keeps the endpoint's cache keys
    assert endpoint_key(f"http://h/v1?{name}=old-1") == endpoint_key(f"http://h/v1?{name}=new-2")


@pytest.mark.parametrize("url, shown", [
    ("https://img.example.com/p/1.jpg?hdnts=exp=1767225600~acl=/p/*~hmac=0f3c9a1b2d", "hdnts=<redacted>"),
    ("https://img.example.com/p/1.jpg?w=500&hdnea=exp%3D1767225600%7Eacl%3D%2Fp%2F*%7Ehmac%3D0f3c9a1b2d",
     "?w=500&hdnea=<redacted>"),  # percent-encoded: its hmac is no "hmac=" field
    ("https://img.example.com/p/1.jpg?hdntl=exp%3D1767225600%7Eacl%3D%2Fp%2F*%7Ehmac%3D0f3c9a1b2d&w=1",
     "?hdntl=<redacted>&w=1"),  # Akamai's third token name
    ("https://img.example.com/p/1.jpg?__token__=st=1~exp=2~acl=%2f*~hmac=0f3c9a1b2d&w=1", "__token__=<redacted>&w=1"),
    # a segment of the path, percent-encoded (no "hmac=" field) or not
    ("https://img.example.com/hdnts=exp%3D1767225600%7Eacl%3D%2Fp%2F*%7Ehmac%3D0f3c9a1b2d/p/1.jpg",
     "img.example.com/hdnts=<redacted>"),
    ("https://img.example.com/HDNEA=exp=1767225600~acl=/p/*~hmac=0f3c9a1b2d/p/1.jpg", "img.example.com/HDNEA=<redacted>"),
])
def test_an_akamai_token_in_an_image_url_is_redacted_whole(url, shown):
    """An image CDN's Akamai token (``hdnts``, ``hdnea``, ``hdntl``, ``__token__``) grants access to the image as a signed
    URL's signature does: a failure quoting the URL shows none of it."""
    redacted = redact_secrets(f"HTTPError: 403 Client Error: Forbidden for url: {url}")
    assert shown in redacted and "0f3c9a1b2d" not in redacted and "1767225600" not in redacted, redacted


#: A URL nested, percent-encoded, in another's query value (a proxy's or a redirect's ``?url=``): its credentials
#: are as secret as the outer URL's, and the text around them stays as it was encoded.
NESTED = "https://proxy.example/fetch?url=https%3A%2F%2Fcdn.example%2F"


@pytest.mark.parametrize("url, shown", [
    (NESTED + "img.jpg%3Ftoken%3Dsecretvalue%26w%3D100", NESTED + "img.jpg%3Ftoken%3D<redacted>%26w%3D100"),
    (NESTED + "x%2Fimg.jpg%3Fhdnts%3Dexp%3D1~acl%3D%2F*~hmac%3Dabc123", NESTED + "x%2Fimg.jpg%3Fhdnts%3D<redacted>"),
    (NESTED + "img.jpg%3fw%3d100%26X-Amz-Signature%3dsecretvalue&h=5",  # lower-case hex; the outer "&" ends it
     NESTED + "img.jpg%3fw%3d100%26X-Amz-Signature%3d<redacted>&h=5"),
    (NESTED + "img.jpg%3Fsig%3Dsecret%253Dvalue%2526x%23part",  # an inner value's own encoding is part of it
     NESTED + "img.jpg%3Fsig%3D<redacted>%23part"),
    (NESTED + "img.jpg%3Bapi_key%3Dsecretvalue", NESTED + "img.jpg%3Bapi_key%3D<redacted>"),  # a path parameter
    (NESTED + "hdnts%3Dexp%3D1~acl%3D%2F*~hmac%3Dabc123%2Fimg.jpg&w=1", NESTED + "hdnts%3D<redacted>&w=1"),
    # encoded twice (a URL in a URL in a URL): the innermost value ends at its own "&" or an outer one
    ("https://a.example/?next=https%3A%2F%2Fb.example%2F%3Furl%3Dhttps%253A%252F%252Fcdn.example%252Fimg.jpg"
     "%253Ftoken%253Dsecretvalue%2526w%253D100%26v%3D2",
     "https://a.example/?next=https%3A%2F%2Fb.example%2F%3Furl%3Dhttps%253A%252F%252Fcdn.example%252Fimg.jpg"
     "%253Ftoken%253D<redacted>%2526w%253D100%26v%3D2"),
    ("https://a.example/?u=https%253A%252F%252Fcdn.example%252Fi.jpg%253Fhdnea%253Dexp%25253D1~hmac%25253Dabc123",
     "https://a.example/?u=https%253A%252F%252Fcdn.example%252Fi.jpg%253Fhdnea%253D<redacted>"),
    (NESTED.replace("%2F%2F", "%2F%2Fuser%3Asecretvalue%40") + "img.jpg",
     NESTED.replace("%2F%2F", "%2F%2F<credentials redacted>%40") + "img.jpg"),
])
def test_the_credentials_of_a_url_nested_percent_encoded_in_another_are_redacted(url, shown):
    redacted = redact_secrets(f"HTTPError: 403 Client Error: Forbidden for url: {url}")
    assert redacted == f"HTTPError: 403 Client Error: Forbidden for url: {shown}"
    for secret in ("secretvalue", "abc123", "secret%253Dvalue"):
        assert secret not in redacted


@pytest.mark.parametrize("url", [
    NESTED + "img.jpg%3Fw%3D100%26country_code%3DUS%26author%3Dme",  # no secret-named parameter
    NESTED + "img.jpg%3Ftoken%3D%26w%3D100",  # a parameter with no value holds no secret
    NESTED + "hdnts-guide.html%3Fw%3D100",  # no token: a file named for one
    "search for 100%25token%3Dfree in the docs",  # no parameter: no separator before the name
])
def test_a_nested_url_without_credentials_is_shown_as_given(url):
    assert redact_secrets(url) == url


def test_an_endpoint_url_with_a_nested_url_without_credentials_is_written_as_given():
    from reddit_amazon.openai_endpoint import display_url, has_credentials

    url = "http://h/v1?next=https%3A%2F%2Fcdn.example%2Fimg.jpg%3Fw%3D100%26country_code%3DUS"
    assert display_url(url) == url and not has_credentials(url)


@pytest.mark.parametrize("name", ["country_code", "deployment_code", "author", "authority", "keyword", "max_tokens",
                                  "max_new_tokens", "tokenizer", "design", "api-version", "signin", "zip_code",
                                  "retry_policy", "policy_id"])
def test_a_parameter_with_a_secret_word_inside_another_is_not_secret(name):
    """A name is secret by its parts (split at ``_``, ``-`` and case), not by a word found inside a part."""
    from reddit_amazon.openai_endpoint import display_url, has_credentials
    from reddit_amazon.redaction import is_secret_parameter

    assert not is_secret_parameter(name)
    assert redact_secrets(f"GET /v1?{name}=US&x=1") == f"GET /v1?{name}=US&x=1"
    url = f"http://h/v1;{name}=US?{name}=US#{name}=x"  # a path parameter, the query, the fragment
    assert display_url(url) == url and not has_credentials(url)


@pytest.mark.parametrize("text, credential", [
    ("GET /v1?token=abc;def failed", "def"),  # parse_qsl and servers read the value as abc;def
    ("GET /v1?x=1&api_key=abc;def;ghi", "ghi"),
    ("redirected to https://h.invalid/cb#access_token=abc;def&type=bearer", "def"),
    ("GET /v1?api-version=1?token=SECRET-1", "SECRET-1"),  # a second query appended after a first
    ("GET /v1?token=abc?def", "def"),
    ('{"password": "abc;def,ghi"}', "def"),
    ("{'client_secret': 'abc;def'}", "def"),
])
def test_a_secret_value_is_redacted_whole_past_a_semicolon_or_question_mark(text, credential):
    shown = redact_secrets(text)
    assert credential not in shown and "<redacted>" in shown, shown


def test_a_path_parameter_after_a_secret_one_is_kept_in_an_endpoint_url():
    """In a path, ``;`` ends a parameter: the recorded endpoint keeps ``v=2`` (another endpoint than ``v=3``)."""
    from reddit_amazon.openai_endpoint import display_url

    assert display_url("http://h/v1;api_key=k;v=2/") == "http://h/v1;api_key=<redacted>;v=2"


@pytest.mark.parametrize("text, credential, kept", [
    ("Authorization: AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261127/us-east-1/s3/aws4_request, "
     "SignedHeaders=host, Signature=fe5f80f77d5fa3beca038a248ff027d0", "fe5f80f77d5fa3beca038a248ff027d0",
     "SignedHeaders=host"),  # an echoed AWS SigV4 header: the request's signature
    # a connection string: ;Pwd= reads as a URL path parameter, as ;Password= does, whose value a ";" does not end
    ("Server=db;Uid=app;Pwd=Zq81x-unknown;Database=main", "Zq81x-unknown", "Server=db;Uid=app;Pwd="),
])
def test_a_signature_or_pwd_field_is_redacted(text, credential, kept):
    shown = redact_secrets(text)
    assert credential not in shown and "<redacted>" in shown and kept in shown, shown


@pytest.mark.parametrize("text", [
    "password: must be at least 8 characters", "Password: Must contain a digit", "Bearer token-based auth failed",
    "the Bearer re-authentication flow is not supported", "signature: does not match the request",
])
def test_prose_after_a_credential_word_is_left_alone(text):
    assert redact_secrets(text) == text


@pytest.mark.parametrize("text, shown", [
    ("password: swordfish", "password: <redacted>"),  # no sentence after it: the value a config shows
    ("password: hunter2 was rejected", "password: <redacted> was rejected"),
    ("password=must be 8", "password=<redacted> be 8"),
    ('{"password": "must be"}', '{"password": "<redacted>"}'),
    ("rejected: Bearer my-secret-token", "rejected: Bearer <redacted>"),
    ("Bearer sk-live-9x was refused", "Bearer <redacted> was refused"),
])
def test_a_credential_that_reads_like_a_word_is_still_redacted(text, shown):
    assert redact_secrets(text) == shown


def test_the_scheme_is_kept_before_a_known_secret(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    text = f"Authorization: Basic {b64('user:' + KEY)}, Authorization: Bearer {KEY}, {{'x-api-key': '{KEY}'}}"
    assert redact_secrets(text) == ("Authorization: Basic <OPENAI_API_KEY redacted>, "
                                    "Authorization: Bearer <OPENAI_API_KEY redacted>, "
                                    "{'x-api-key': '<OPENAI_API_KEY redacted>'}")


@pytest.mark.parametrize("text, credential", [
    ('{"passphrase": "Zq81x-unknown"}', "Zq81x-unknown"),
    ("{'private_key': '-----BEGIN PRIVATE KEY-----\\nMIIEvQ'}", "MIIEvQ"),
    ('{"GOOGLE_CREDENTIALS": "{\\"type\\": \\"service_account\\"}", "x": 1}', "service_account"),
    ('{"accessToken": "Zq81x-unknown", "expires_in": 3600}', "Zq81x-unknown"),
    ('{"session_cookie": "Zq81x-unknown"}', "Zq81x-unknown"),
    ("{'sig': 'Zq81x-unknown'}", "Zq81x-unknown"),
    ("aws_secret_access_key: Zq81x-unknown", "Zq81x-unknown"),  # YAML
    ("  hf_auth: Zq81x-unknown\n  model: m", "Zq81x-unknown"),
    ("X-Amz-Security-Token: Zq81x-unknown", "Zq81x-unknown"),
    ("Cookie: session=Zq81x-unknown", "Zq81x-unknown"),
    ("Set-Cookie: sid=Zq81x-unknown; Path=/; HttpOnly", "Zq81x-unknown"),
    ("Cookie: theme=dark; csrftoken=Zq81x-unknown; lang=en", "Zq81x-unknown"),  # every cookie of the header
    # an environment a plugin's traceback quotes, of a process whose variables this one does not have
    ("subprocess.CalledProcessError: Command '['env', 'MYSQL_PWD=Zq81x-unknown', 'mysql']' returned non-zero "
     "exit status 1.", "Zq81x-unknown"),
    ("environ({'HF_TOKEN': 'hf_Zq81xunknown', 'HOME': '/root'})", "hf_Zq81xunknown"),
    ("GPG_PASSPHRASE=Zq81x-unknown gpg --batch", "Zq81x-unknown"),
    ("SSHPASS=Zq81x-unknown sshpass -e ssh host", "Zq81x-unknown"),
    ('    api_key = "Zq81x-unknown"', "Zq81x-unknown"),  # a key written in a traceback's source line
    ("[db]\npassword = Zq81x\n", "Zq81x"),  # an INI file
])
def test_a_field_is_redacted_by_the_one_vocabulary_of_secret_names(text, credential):
    """A field in free text (JSON, a dict, YAML, a header, ``name=value``) is secret by ``is_secret_name``, as a
    URL parameter, an environment variable or a ``--model-args`` argument is."""
    shown = redact_secrets(text)
    assert credential not in shown and "<redacted>" in shown, shown


@pytest.mark.parametrize("text, shown", [
    ('{"passphrase": "hunter2-abc"} Cookie: session=abc123def456',
     '{"passphrase": "<redacted>"} Cookie: <redacted>'),
    ("Cookie: a=1; session=Zq81x; theme=dark, Accept: application/json",
     "Cookie: <redacted>, Accept: application/json"),
    ("Set-Cookie: sid=Zq81x; Path=/; HttpOnly\nContent-Type: text/plain",
     "Set-Cookie: <redacted>\nContent-Type: text/plain"),
    ("Proxy-Authorization: Basic dXNlcjpwYXNz, x-goog-api-key: AIzaZq81x",
     "Proxy-Authorization: Basic <redacted>, x-goog-api-key: <redacted>"),
    ('{"password": "Zq81x", "note": "api_key=AIzaZq81x"}', '{"password": "<redacted>", "note": "api_key=<redacted>"}'),
])
def test_a_secret_field_keeps_its_name_and_what_follows_it(text, shown):
    assert redact_secrets(text) == shown


@pytest.mark.parametrize("text", [
    '{"model": "m", "max_tokens": 512, "author": "bob", "usage": {"prompt_tokens": 9, "total_tokens": 12}}',
    "keywords: a, b", "token_count=3", "tokenizer: bert-base-uncased", "key_column=asin",
    "the key: press enter", "token: 3 of 5 done", "Cookie: required for this endpoint",
    "if token == expected: return", "while (key := next(keys)):",
    "OpenAIError: api_key=None; set OPENAI_API_KEY",  # a missing key is what to fix: shown
    "bypass_cache=true, compass: north",
    '    token = tokenizer(text)\n    key = os.environ["OPENAI_API_KEY"]',  # a traceback's source lines
    "    runs = sorted(runs, key=lambda run: run.name)", "    keys = [text_key(t) for t in texts]",
    '    key = f"{path}|{size}"', "    def get(self, key: str) -> str | None:", "    json.dumps(x, sort_keys=True)",
    "    stamp({'key': key}, token=token)",
])
def test_a_field_with_no_secret_name_or_no_secret_value_is_left_alone(text):
    assert redact_secrets(text) == text


@pytest.mark.parametrize("text", [
    "KeyError: 'title'",  # a plugin's traceback and `Error: KeyError: ...` end so: the missing key is what to fix
    "KeyError: 'OPENAI_API_KEY'",
    "datasets.exceptions.DatasetGenerationError: KeyError: 'images'",
    "jwt.exceptions.ExpiredSignatureError: Signature has expired",
    "oauthlib.oauth2.rfc6749.errors.TokenExpiredError: (token_expired)",
])
def test_an_exception_named_for_a_secret_word_keeps_its_message(text):
    assert redact_secrets(text) == text


@pytest.mark.parametrize("text", [
    "GenerationConfig(pad_token_id=0, eos_token_id=2, bos_token_id=1)",  # transformers' warnings and errors
    "Setting `pad_token_id` to `eos_token_id`:2 for open-end generation.",
    "'token_type_ids': [0, 0, 0]",
    '{"access_token": "<redacted>", "token_type": "Bearer", "expires_in": 3600}',  # OAuth's token kind
])
def test_a_tokenizer_s_token_id_or_an_oauth_token_type_is_shown(text):
    assert redact_secrets(text) == text


@pytest.mark.parametrize("text, shown", [
    ("    client = OpenAI(api_key=sk-proj-abc123XYZdef456)", "    client = OpenAI(api_key=<redacted>)"),
    ("(key: sk-proj-abc123XYZdef456)", "(key: <redacted>)"),
    ("OpenAI(api_key=sk-proj-abc(123)XYZ)", "OpenAI(api_key=<redacted>)"),  # a ")" the value opened is its own
    ("connect(user=u, password=hunter2!)", "connect(user=u, password=<redacted>)"),
    ("(password: hunter2!)) failed", "(password: <redacted>)) failed"),
])
def test_an_unquoted_value_ends_before_a_parenthesis_it_did_not_open(text, shown):
    """The call's ``)`` after an argument, or the ``)`` closing a remark, is not the secret's: it stays."""
    assert redact_secrets(text) == shown


@pytest.mark.parametrize("text", [
    "        self.key = key", "        self.api_key = api_key", "        self.key = api_key",
    "    client = OpenAI(api_key=key)", "    record(key=upstream.key)", "    session.token = self._token",
])
def test_a_variable_passed_on_under_its_own_name_is_code(text):
    """A traceback's source line passing a variable on under its own name, dotted or a part of it, shows code."""
    assert redact_secrets(text) == text


@pytest.mark.parametrize("text, shown", [
    ("    client = OpenAI(api_key=sk-proj-abc123XYZdef456)", "    client = OpenAI(api_key=<redacted>)"),
    ("self.key = sk_live_abc123XYZ", "self.key = <redacted>"),
    ('self.key = "key"', 'self.key = "<redacted>"'),  # a quoted value is text, not a variable
    ("self.api_key = hunter2_key", "self.api_key = <redacted>"),
    ("api_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "api_key=<redacted>"),
    ("token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcDEF123_-x", "token=<redacted>"),
])
def test_a_secret_after_a_dotted_or_partial_name_is_still_redacted(text, shown):
    assert redact_secrets(text) == shown


def test_an_arrow_schema_in_an_error_is_shown():
    """pyarrow and ``datasets`` print a schema as ``name: type`` (a CastError, an ArrowInvalid): the types of
    fields named ``key``, ``token`` or ``password`` are no secrets."""
    import pyarrow as pa

    schema = pa.schema([("key", pa.string()), ("api_key", pa.large_string()), ("keys", pa.list_(pa.int64())),
                        ("token", pa.struct([("key", pa.string()), ("value", pa.int64())])),
                        ("secret", pa.float32()), ("password", pa.timestamp("us")), ("sig", pa.bool_()),
                        ("passphrase", pa.map_(pa.string(), pa.int32())), ("pwd", pa.binary()),
                        ("auth", pa.dictionary(pa.int32(), pa.string())), ("access_token", pa.uint8()),
                        ("private_key", pa.float64())])
    text = f"datasets.table.CastError: Couldn't cast\n{schema}\nto\n{{'key': Value('string')}}"
    assert "key: string" in text and "token: struct<key: string, value: int64>" in text
    assert redact_secrets(text) == text
    message = "ArrowInvalid: Failed to parse struct<key: string, value: int64>, key: double"
    assert redact_secrets(message) == message


@pytest.mark.parametrize("text, shown", [
    ("key: string1", "key: <redacted>"), ("password: int64abc", "password: <redacted>"),
    ("token: structure<", "token: <redacted><"), ("api_key=string", "api_key=<redacted>"),
    ('"password": "double"', '"password": "<redacted>"'), ("password: hunter2!", "password: <redacted>"),
    ("key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "key: <redacted>"),
    ("Authorization: Bearer string-9x", "Authorization: Bearer <redacted>"),
])
def test_a_secret_that_starts_like_an_arrow_type_or_is_one_outside_a_schema_is_redacted(text, shown):
    assert redact_secrets(text) == shown


@pytest.mark.parametrize("text", [
    "primary_key: asin", "ssl: {key_file=/etc/ssl/private/server.key, cert_file=/etc/ssl/certs/server.pem}",
    "    json.dumps(row, sort_keys=True)", "FOREIGN_KEYS=on", "token_path: ~/.cache/huggingface/token",
])
def test_a_path_to_a_key_or_a_database_key_is_shown(text):
    assert redact_secrets(text) == text


@pytest.mark.parametrize("text, shown", [
    ("primary_api_key: sk-proj-abc123XYZdef456", "primary_api_key: <redacted>"),
    ("key_file_password=hunter2!", "key_file_password=<redacted>"),
    ("private_key: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC==", "private_key: <redacted>"),
    ('{"key": "sk-abc123XYZ", "key_file": "/k.pem"}', '{"key": "<redacted>", "key_file": "/k.pem"}'),
])
def test_a_secret_beside_a_key_file_or_a_database_key_is_still_redacted(text, shown):
    assert redact_secrets(text) == shown
