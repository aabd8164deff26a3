"""The four places that decide whether a name holds a secret agree: URL parameters (display_url, redacted texts),
environment variables (their values redacted from every text), `--model-args` (run.json, results.json) and build
options (the card). They share one vocabulary (reddit_amazon.redaction.is_secret_name); only the named extras
differ: ``code`` and ``Policy`` are secret URL parameters, ``salt`` a secret build option and environment variable
(``REDDIT_AMAZON_SALT``)."""

from __future__ import annotations

import pytest

from benchmark.registry import redacted_args
from cards.datasheet import is_secret_option
from reddit_amazon.openai_endpoint import display_url
from reddit_amazon.redaction import is_secret_parameter, redact_secrets

ALL_SITES = "url env args card"
NO_SITE = ""

#: Name -> the sites that hide its value.
SECRET_NAMES_BY_SITE = {
    # OpenAI / Azure / Anthropic / Google
    "api_key": ALL_SITES, "apiKey": ALL_SITES, "apikey": ALL_SITES, "api_keys": ALL_SITES, "x-api-key": ALL_SITES,
    "OPENAI_API_KEY": ALL_SITES, "OPENAI_API_PASS": ALL_SITES, "AZURE_OPENAI_AD_TOKEN": ALL_SITES,
    "AZURE_CLIENT_SECRET": ALL_SITES, "client_secret_id": ALL_SITES, "Ocp-Apim-Subscription-Key": ALL_SITES,
    "ANTHROPIC_AUTH_TOKEN": ALL_SITES, "x-goog-api-key": ALL_SITES, "GOOGLE_APPLICATION_CREDENTIALS": ALL_SITES,
    "GOOGLE_CREDENTIALS": ALL_SITES, "credentials_json": ALL_SITES,
    # Hugging Face, AWS, Slack
    "HF_TOKEN": ALL_SITES, "hfToken": ALL_SITES, "HF_AUTH": ALL_SITES, "use_auth_token": ALL_SITES,
    "AWS_SECRET_ACCESS_KEY": ALL_SITES, "AWS_ACCESS_KEY_ID": ALL_SITES, "AWS_SESSION_TOKEN": ALL_SITES,
    "X-Amz-Signature": ALL_SITES, "X-Amz-Credential": ALL_SITES, "X-Amz-Security-Token": ALL_SITES,
    "SLACK_BOT_TOKEN": ALL_SITES, "SLACK_SIGNING_SECRET": ALL_SITES, "private_key": ALL_SITES,
    # Basic auth, databases, cookies, OAuth
    "password": ALL_SITES, "passwd": ALL_SITES, "pwd": ALL_SITES, "MYSQL_PWD": ALL_SITES, "PGPASSWORD": ALL_SITES,
    "passphrase": ALL_SITES, "GPG_PASSPHRASE": ALL_SITES, "DB_PASS": ALL_SITES,
    "SSHPASS": ALL_SITES, "dbpass": ALL_SITES, "rootPass": ALL_SITES, "basic_auth": ALL_SITES,
    "Authorization": ALL_SITES, "bearer": ALL_SITES, "session_cookie": ALL_SITES, "accessToken": ALL_SITES,
    "refresh_token": ALL_SITES, "auth": ALL_SITES, "access_code": ALL_SITES, "code_verifier": ALL_SITES,
    "sig": ALL_SITES, "signature": ALL_SITES,
    # the sites' own extras
    "code": "url", "Policy": "url", "salt": "env card", "reddit.salt": "env card", "REDDIT_AMAZON_SALT": "env card",
    "PWD": "url args card",  # as an environment variable, the shell's working directory
    # benign: cards and results must show these
    "max_tokens": NO_SITE, "max_new_tokens": NO_SITE, "tokenizer": NO_SITE, "key_column": NO_SITE,
    "author": NO_SITE, "authority": NO_SITE, "country_code": NO_SITE, "deployment_code": NO_SITE,
    "num_keys": NO_SITE, "token_count": NO_SITE, "top_k": NO_SITE, "keywords": NO_SITE, "monkey": NO_SITE,
    "tokens_per_second": NO_SITE, "api-version": NO_SITE, "OPENAI_ORG_ID": NO_SITE, "username": NO_SITE,
    "base_url": NO_SITE, "bypass_cache": NO_SITE, "signin": NO_SITE, "PYTHON_KEYRING_BACKEND": NO_SITE,
    "TOKENIZERS_PARALLELISM": NO_SITE, "passthrough": NO_SITE, "compass": NO_SITE, "bypass": NO_SITE,
    "lowpass_filter": NO_SITE, "PGPASSFILE": NO_SITE, "OLDPWD": NO_SITE, "KeyError": NO_SITE, "key_error": NO_SITE,
    "pad_token_id": NO_SITE, "token_type_ids": NO_SITE, "token_type": NO_SITE,
    "key_file": NO_SITE, "SSL_KEY_FILE": NO_SITE, "token_path": NO_SITE, "password_file": NO_SITE,
    "credentials_dir": NO_SITE, "primary_key": NO_SITE, "foreign_keys": NO_SITE, "sort_keys": NO_SITE,
    "cache_key": NO_SITE, "partition_key": NO_SITE, "retry_policy": NO_SITE, "policy_file": NO_SITE,
    "proxy_auth_required": NO_SITE, "password_required": NO_SITE,
    # ... unless another part names a secret
    "primary_api_key": ALL_SITES, "key_file_password": ALL_SITES, "SSL_KEY_PASSWORD": ALL_SITES,
}

VALUE = "Zq81x-value-of-it"


def _hidden_in_a_url(name: str) -> bool:
    shown = display_url(f"http://h.invalid/v1?{name}={VALUE}")
    assert is_secret_parameter(name) == (VALUE not in shown)
    return VALUE not in shown


def _hidden_from_texts_as_an_environment_variable(name: str, monkeypatch) -> bool:
    monkeypatch.setenv(name, VALUE)
    return VALUE not in redact_secrets(f"the endpoint said: {VALUE} is not valid")


def _hidden_in_recorded_model_args(name: str) -> bool:
    return redacted_args({name: VALUE})[name] == "<redacted>"


@pytest.mark.parametrize("name, sites", SECRET_NAMES_BY_SITE.items())
def test_every_site_hides_the_same_names_but_for_its_named_extras(name, sites, monkeypatch):
    hidden = {"url": _hidden_in_a_url(name),
              "env": _hidden_from_texts_as_an_environment_variable(name, monkeypatch),
              "args": _hidden_in_recorded_model_args(name),
              "card": is_secret_option(name)}
    assert {site for site, is_hidden in hidden.items() if is_hidden} == set(sites.split())
