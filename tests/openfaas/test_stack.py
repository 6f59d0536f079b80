"""The OpenFaaS target's stack.yml export (`fnpack.targets.openfaas.stack`): what `faas-cli deploy -f stack.yml`
makes of it is the FunctionDeployments fnpack POSTs, it validates against faas-cli's stack schema
(`faas-cli-stack.schema.json`, written from faas-cli's Go types: see its $comment), and every string survives
both YAML readers (yaml.v3 in faas-cli, YAML 1.1 in PyYAML) and faas-cli's envsubst. Fast: no servers."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from fnpack.errors import UsageError
from fnpack.targets.openfaas.stack import _envsubst, deployments_of, stack_yaml

SCHEMA = json.loads((Path(__file__).parent / "faas-cli-stack.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
GATEWAY = "http://127.0.0.1:8080"
IMAGE = "ghcr.io/fnpack/runtime:0.9.0-python3.11"
ROUTE = {"function": "echo", "alias": "live", "primary": 3, "canary": 4, "weight": 10,
         "upstream": "http://gateway.openfaas:8080", "revision": 7}

# Shaped as fnpack's OpenFaaS target makes them (functions.py): a version with every field set...
VERSION: dict[str, Any] = {
    "service": "echo-v3",
    "image": IMAGE,
    "namespace": "openfaas-fn",
    "envProcess": "python -m fnpack.worker",
    "envVars": {"FNPACK_ARCHIVE": "s3://models/echo/3/archive.tar.zst", "FNPACK_SHA256": "ab" * 32,
                "FNPACK_FUNCTION": "echo", "FNPACK_MODEL_VERSION": "3", "FNPACK_CACHE_DIR": "/tmp/fnpack-cache",
                "AWS_ENDPOINT_URL": "http://minio.storage:9000",
                "AWS_SHARED_CREDENTIALS_FILE": "/var/openfaas/secrets/fnpack-storage"},
    "constraints": ["node.kubernetes.io/instance-type=g5.xlarge", "topology.kubernetes.io/zone=eu-west-1a"],
    "secrets": ["fnpack-storage"],
    "labels": {"fnpack.dev/function": "echo", "fnpack.dev/version": "3", "fnpack.dev/kind": "version",
               "com.openfaas.scale.min": "1", "com.openfaas.scale.max": "5", "com.openfaas.scale.zero": "true",
               "com.openfaas.scale.zero-duration": "5m"},
    "annotations": {"fnpack.dev/sha256": "ab" * 32, "fnpack.dev/archive": "s3://models/echo/3/archive.tar.zst",
                    "fnpack.dev/created-at": "2026-08-01T12:00:00+00:00", "fnpack.dev/actor": "ci@example.com"},
    "limits": {"memory": "512Mi", "cpu": "1000m"},
    "requests": {"memory": "512Mi", "cpu": "250m"},
    "readOnlyRootFilesystem": True,
}
# ... and an alias's router (JSON in an env value and an annotation: quotes, colons, braces, commas).
ROUTER: dict[str, Any] = {
    "service": "echo",
    "image": IMAGE,
    "namespace": "openfaas-fn",
    "envVars": {"FNPACK_ROUTE": json.dumps(ROUTE, separators=(",", ":"))},
    "labels": {"fnpack.dev/function": "echo", "fnpack.dev/alias": "live", "fnpack.dev/kind": "router",
               "com.openfaas.scale.min": "1", "com.openfaas.scale.max": "5"},
    "annotations": {"fnpack.dev/route": json.dumps({"primary": 3, "canary": 4, "weight": 10}),
                    "fnpack.dev/revision": "7"},
    "limits": {"memory": "128Mi"}, "requests": {"memory": "64Mi"},
    "readOnlyRootFilesystem": True,
}
# The values YAML gets wrong when written plainly: YAML 1.1 booleans and null, numbers, indicators, escapes,
# and what faas-cli's envsubst would rewrite (`${`, `$$`, a doubled backslash, backslash-slash).
ODD = ["yes", "Yes", "NO", "on", "Off", "y", "N", "true", "False", "null", "Null", "~", "", "1.0", "1", "0x1F",
       "0o17", "017", "1e3", "-1", "+1", ".inf", "-.Inf", ".NaN", "1_000", "190:20:30", "2026-08-01",
       "2026-08-01T12:00:00Z", "<<", "=", "- dash", "? question", ": colon", "a: b", "a:b", "a #b", "#hash",
       "key: value # comment", '"quoted"', "'single'", "it's", 'he said "hi"', "line1\nline2", "line\n", "\nline",
       "trailing ", " leading", "  ", "\t", "tab\there", "cr\r\nlf", "\x00nul", "\x7fdel", "\x85nel", "\u2028ls",
       "é", "日本", "emoji \U0001F600", "{a: 1}", "[x, y]", "*alias", "&anchor", "!tag", "!!str", "%directive",
       "@at", "`tick`", "|", ">", "---", "...", "${HOME}", "$HOME", "$$", "$", "a$", "$${X}", "\\", "\\\\",
       "\\/", "C:\\path\\to", "\\n", "\\x24", "http://example.com:8080/path?q=1&r=2#frag"]


def roundtrip(*deployments: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    text = stack_yaml(GATEWAY, [copy.deepcopy(d) for d in deployments])
    return text, deployments_of(text)


def as_sent(deployment: dict[str, Any]) -> dict[str, Any]:
    """What faas-cli deploy always adds: labels and annotations, `{}` when there are none (proxy/deploy.go)."""
    return {"labels": {}, "annotations": {}, **deployment}


def assert_valid(text: str) -> dict[str, Any]:
    loaded = yaml.safe_load(text)
    errors = sorted(VALIDATOR.iter_errors(loaded), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    return loaded


def test_a_version_with_every_field_set_round_trips_exactly() -> None:
    text, found = roundtrip(VERSION)
    assert found == [VERSION]
    assert_valid(text)


def test_a_router_round_trips_exactly() -> None:
    text, found = roundtrip(ROUTER)
    assert found == [ROUTER]
    assert json.loads(found[0]["envVars"]["FNPACK_ROUTE"]) == ROUTE
    assert_valid(text)


def test_versions_and_routers_together_keep_their_order_and_names() -> None:
    v4 = {**copy.deepcopy(VERSION), "service": "echo-v4"}
    canary = {**copy.deepcopy(ROUTER), "service": "echo-canary"}
    text, found = roundtrip(VERSION, v4, ROUTER, canary)
    assert found == [VERSION, v4, ROUTER, canary]
    loaded = assert_valid(text)
    assert list(loaded["functions"]) == ["echo-v3", "echo-v4", "echo", "echo-canary"]
    assert loaded["version"] == "1.0" and loaded["provider"] == {"name": "openfaas", "gateway": GATEWAY}


@pytest.mark.parametrize("base", [VERSION, ROUTER], ids=["version", "router"])
def test_with_the_optional_fields_absent_faas_cli_adds_only_empty_labels_and_annotations(base: dict) -> None:
    minimal = {"service": base["service"], "image": base["image"]}
    text, found = roundtrip(minimal)
    assert found == [as_sent(minimal)]
    assert_valid(text)
    # fnpack always sets both, so its own deployments need no such allowance
    assert as_sent(base) == base


def test_empty_values_are_what_faas_cli_would_not_send_anyway() -> None:
    empty = {"service": "echo-v1", "image": IMAGE, "namespace": "", "envProcess": "", "envVars": {},
             "constraints": [], "secrets": [], "labels": {}, "annotations": {}, "limits": None,
             "requests": {"memory": "", "cpu": ""}, "readOnlyRootFilesystem": False}
    text, found = roundtrip(empty)
    assert found == [{"service": "echo-v1", "image": IMAGE, "labels": {}, "annotations": {}}]
    assert_valid(text)


def test_each_function_is_deploy_only_and_uses_faas_cli_field_names() -> None:
    text, _ = roundtrip(VERSION, ROUTER)
    loaded = assert_valid(text)
    for function in loaded["functions"].values():
        assert function["skip_build"] is True
        assert "lang" not in function and "handler" not in function  # build-only; without lang no template is read
    version = loaded["functions"]["echo-v3"]
    assert version["environment"] == VERSION["envVars"] and version["fprocess"] == VERSION["envProcess"]
    assert version["readonly_root_filesystem"] is True and version["namespace"] == "openfaas-fn"
    assert version["limits"] == VERSION["limits"] and version["requests"] == VERSION["requests"]
    assert version["secrets"] == VERSION["secrets"] and version["constraints"] == VERSION["constraints"]
    assert version["labels"] == VERSION["labels"] and version["annotations"] == VERSION["annotations"]


def test_the_output_is_commented_deterministic_and_sorted() -> None:
    text, _ = roundtrip(VERSION, ROUTER)
    assert text.startswith("# ")
    assert "`fnpack deploy --target openfaas --dry-run -o yaml`" in text.split("\nversion:")[0]
    shuffled = copy.deepcopy(VERSION)
    for key in ("envVars", "labels", "annotations"):
        items = list(shuffled[key].items())
        random.Random(key).shuffle(items)
        shuffled[key] = dict(items)
    shuffled = dict(reversed(list(shuffled.items())))
    assert stack_yaml(GATEWAY, [shuffled, ROUTER]) == text
    env_keys = list(yaml.safe_load(text)["functions"]["echo-v3"]["environment"])
    assert env_keys == sorted(env_keys)
    assert text.isascii() and text.endswith("\n")


@pytest.mark.parametrize("value", ODD, ids=[repr(v) for v in ODD])
def test_odd_values_survive_as_strings(value: str) -> None:
    odd = copy.deepcopy(VERSION)
    odd["envVars"]["ODD"] = value
    odd["envVars"][value or "EMPTY_KEY_IS_NOT_A_NAME"] = "key"
    odd["labels"]["odd"] = value
    odd["annotations"][f"fnpack.dev/{value}"] = value
    odd["secrets"] = ["fnpack-storage", value] if value != "fnpack-storage" else odd["secrets"]
    odd["constraints"] = [value]
    odd["envProcess"] = value or "x"
    odd["limits"] = {"memory": value or "1Mi", "cpu": "1000m"}
    odd["namespace"] = value or "openfaas-fn"
    text, found = roundtrip(odd)
    assert found == [odd]  # as faas-cli reads it (yaml.v3)
    loaded = assert_valid(text)  # as a YAML 1.1 reader reads it: every value a string, the same one
    function = loaded["functions"]["echo-v3"]
    assert function["environment"] == odd["envVars"] and function["labels"] == odd["labels"]
    assert function["annotations"] == odd["annotations"] and function["secrets"] == odd["secrets"]
    assert function["constraints"] == [value] and function["fprocess"] == odd["envProcess"]
    # nothing for faas-cli's envsubst (on by default) to rewrite, so --envsubst=false reads the same file
    assert _envsubst(text) == text
    assert "$" not in text and "\\\\" not in text and "\\/" not in text


def test_random_strings_survive_both_readers() -> None:
    rng = random.Random(13)
    alphabet = "ab:#-?&*!|>'\"%@`{}[],$\\/ \t\n\r\x00\x1b~.=<+0123456789éλ\u2028\U0001F600yesnoonofftrue"
    for _ in range(200):
        values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(6)]
        deployment = {"service": "fuzz", "image": IMAGE, "envVars": {f"V{i}": v for i, v in enumerate(values)},
                      "labels": {v: v for v in values}, "annotations": {"a": values[0]}}
        text, found = roundtrip(deployment)
        assert found == [deployment]
        loaded = assert_valid(text)
        assert loaded["functions"]["fuzz"]["environment"] == deployment["envVars"]
        assert (loaded["functions"]["fuzz"].get("labels") or {}) == deployment["labels"]
        assert _envsubst(text) == text


def test_the_schema_is_strict_about_what_faas_cli_would_ignore_or_misread() -> None:
    text, _ = roundtrip(VERSION)
    good = yaml.safe_load(text)
    assert not list(VALIDATOR.iter_errors(good))
    bad = [
        ("an unknown function key", lambda s: s["functions"]["echo-v3"].__setitem__("readOnlyRootFilesystem", True)),
        ("a GPU limit", lambda s: s["functions"]["echo-v3"]["limits"].__setitem__("nvidia.com/gpu", "1")),
        ("an unquoted version", lambda s: s.__setitem__("version", 1.0)),
        ("the legacy provider", lambda s: s["provider"].__setitem__("name", "faas")),
        ("a boolean label", lambda s: s["functions"]["echo-v3"]["labels"].__setitem__("canary", True)),
        ("a quoted boolean", lambda s: s["functions"]["echo-v3"].__setitem__("skip_build", "true")),
        ("a name that is no DNS label", lambda s: s["functions"].__setitem__("Echo_V1", {"image": IMAGE})),
    ]
    for what, change in bad:
        stack = copy.deepcopy(good)
        change(stack)
        assert list(VALIDATOR.iter_errors(stack)), what


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["limits"].__setitem__("nvidia.com/gpu", "1"), "only memory and cpu"),
    (lambda d: d.__setitem__("registryAuth", "dXNlcjpwYXNz"), "registryAuth"),
    (lambda d: d["envVars"].__setitem__("PORT", 8080), "not a string"),
    (lambda d: d["labels"].__setitem__("canary", True), "not a string"),
    (lambda d: d.__setitem__("secrets", ["s", "s"]), "named twice"),
    (lambda d: d.__setitem__("image", ""), "no image"),
    (lambda d: d["envVars"].__setitem__("X", "\ud800"), "surrogate"),
    (lambda d: d.__setitem__("readOnlyRootFilesystem", "true"), "not a boolean"),
], ids=["gpu", "unknown-field", "int-env", "bool-label", "secret-twice", "no-image", "surrogate", "str-bool"])
def test_what_a_stack_file_cannot_carry_is_refused(change: Any, message: str) -> None:
    deployment = copy.deepcopy(VERSION)
    change(deployment)
    with pytest.raises(UsageError, match=message):
        stack_yaml(GATEWAY, [deployment])


def test_two_deployments_of_one_name_are_refused() -> None:
    with pytest.raises(UsageError, match="two deployments"):
        stack_yaml(GATEWAY, [VERSION, VERSION])


# ---- the emulation of faas-cli deploy itself, on hand-written files -------------------------------------------

HAND = """\
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  plain:
    image: example/plain
    environment:
      A: yes
      B: 1.0
      C: null
      D: "$${NOT_A_VAR}"
    labels:
      canary: true
    secrets: [s1, s2, s1]
    readonly_root_filesystem: yes
    limits:
      cpu: 100m
"""


def test_deployments_of_reads_as_faas_cli_does() -> None:
    # yaml.v3 sets a Go string to the text as written (`yes`, `1.0`), a plain null to ""; envsubst reads `$$` as
    # `$`; util.MergeSlice drops a repeated secret; an untagged image gets `:latest` (schema.BuildImageName).
    assert deployments_of(HAND) == [{
        "service": "plain", "image": "example/plain:latest",
        "envVars": {"A": "yes", "B": "1.0", "C": "", "D": "${NOT_A_VAR}"},
        "labels": {"canary": "true"}, "annotations": {}, "secrets": ["s1", "s2"],
        "readOnlyRootFilesystem": True, "limits": {"cpu": "100m"},
    }]
    # the same file is the kind a YAML 1.1 reader gets wrong: the schema says so
    assert list(VALIDATOR.iter_errors(yaml.safe_load(HAND)))


@pytest.mark.parametrize(("text", "message"), [
    (HAND.replace("name: openfaas", "name: faas"), "only valid \"provider.name\""),
    ('version: "2.0"\n' + HAND, "only valid versions"),
    (HAND.replace("$${NOT_A_VAR}", "${HOME}"), "environment variable"),
    (HAND.replace("readonly_root_filesystem: yes", 'readonly_root_filesystem: "true"'), "boolean"),
    (HAND.replace("      B: 1.0\n", "      A: again\n"), "already defined"),
    (HAND.replace("    image: example/plain\n", "    image: example/plain\n    lang: python3\n"), "template"),
    (HAND.replace("      B: 1.0\n", "      <<: {E: e}\n"), "merge keys"),
], ids=["provider", "version", "envsubst", "quoted-bool", "duplicate-key", "lang", "merge-key"])
def test_deployments_of_refuses_what_faas_cli_refuses_or_this_does_not_emulate(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        deployments_of(text)
