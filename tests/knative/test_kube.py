"""The knative target's Kubernetes client (kubeconfig.py, kube.py) against the session's real API server
(`kube_cluster`: apiextensions-apiserver with Knative Serving's CRDs, real TLS, an admin kubeconfig).

Each test works in a namespace of its own (Knative objects need no Namespace object on that server). Only what
the real server cannot show is played with httpx.MockTransport: a 403 (the test server allows everything), a
token an exec plugin refreshes, and what is sent on the wire.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kube_cluster import KubeCluster
from servers import free_port

from fnpack import __version__
from fnpack.errors import AccessDeniedError, ConflictError, FnpackError, NotFoundError, StartError, UsageError
from fnpack.targets.knative.kube import FIELD_MANAGER, GROUP, KubeApi, WatchExpired
from fnpack.targets.knative.kubeconfig import Connection, load_connection

pytestmark = pytest.mark.timeout(120)


# --- helpers ---------------------------------------------------------------------------------------------------

@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with no KUBECONFIG, no ~/.kube/config and no service account: only what a test passes."""
    return {"HOME": str(tmp_path / "home")}


@pytest.fixture
def ns() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def api(kube_cluster: KubeCluster, ns: str, env: dict[str, str]) -> Iterator[KubeApi]:
    with KubeApi(load_connection(kube_cluster.kubeconfig, namespace=ns, environ=env)) as kube:
        yield kube


def admin(cluster: KubeCluster) -> dict[str, Any]:
    return json.loads(cluster.kubeconfig.read_text())


def pki(cluster: KubeCluster) -> Path:
    return cluster.dir / "pki"


def write(path: Path, config: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def kubeconfig(server: str, cluster: dict[str, Any], user: dict[str, Any] | None, *, namespace: str = "default",
               context: str = "test") -> dict[str, Any]:
    ctx: dict[str, Any] = {"cluster": "c", "namespace": namespace}
    if user is not None:
        ctx["user"] = "u"
    return {"apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
            "users": [{"name": "u", "user": user}] if user is not None else [],
            "contexts": [{"name": context, "context": ctx}]}


def admin_user(cluster: KubeCluster) -> dict[str, Any]:
    return admin(cluster)["users"][0]["user"]


def admin_ca(cluster: KubeCluster) -> dict[str, Any]:
    return {"certificate-authority-data": admin(cluster)["clusters"][0]["cluster"]["certificate-authority-data"]}


def service(name: str, image: str = "ghcr.io/example/fn:1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": "Service", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"template": {"spec": {"containers": [{"image": image}]}}}}


def image_of(obj: dict[str, Any]) -> str:
    return obj["spec"]["template"]["spec"]["containers"][0]["image"]


def names(items: list[dict[str, Any]]) -> list[str]:
    return sorted(i["metadata"]["name"] for i in items)


def other_ca(folder: Path) -> Path:
    """A CA that signed nothing the test server has."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                    "-days", "1", "-subj", "/CN=some-other-ca"], cwd=folder, check=True, capture_output=True)
    return folder / "ca.crt"


def usage(call: Any) -> UsageError:
    with pytest.raises(UsageError) as caught:
        call()
    assert caught.value.exit_code == 2 and caught.value.hint
    return caught.value


# --- loading kubeconfigs ---------------------------------------------------------------------------------------

def test_admin_kubeconfig_by_explicit_path(kube_cluster: KubeCluster, env: dict[str, str], ns: str) -> None:
    conn = load_connection(kube_cluster.kubeconfig, environ=env)
    assert (conn.server, conn.context, conn.user, conn.namespace) == (kube_cluster.server, "test", "admin", "default")
    assert conn.source == str(kube_cluster.kubeconfig) and not conn.insecure and conn.headers == {}
    with KubeApi(load_connection(str(kube_cluster.kubeconfig), namespace=ns, environ=env)) as kube:
        assert kube.namespace == ns
        items, version = kube.list("services")
        assert items == [] and version.isdigit()


def test_yaml_and_json_kubeconfigs(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path, ns: str) -> None:
    as_yaml = write(tmp_path / "config.yaml", admin(kube_cluster))
    assert not as_yaml.read_text().lstrip().startswith("{")  # the cluster's own kubeconfig is the JSON one
    for path in (kube_cluster.kubeconfig, as_yaml):
        with KubeApi(load_connection(path, namespace=ns, environ=env)) as kube:
            kube.apply("services", service(f"s-{path.suffix.strip('.') or 'json'}"))
    with KubeApi(load_connection(as_yaml, namespace=ns, environ=env)) as kube:
        assert names(kube.list("services")[0]) == ["s-json", "s-yaml"]


def test_kubeconfig_list_merged_as_kubectl_merges(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path,
                                                  ns: str) -> None:
    # first.yaml: a context of its own (and the current-context) using the cluster and user of the admin file
    first = write(tmp_path / "first.yaml", {"current-context": "mine",
                                            "contexts": [{"name": "mine", "context": {"cluster": "test",
                                                                                      "user": "admin",
                                                                                      "namespace": ns}}]})
    listed = os.pathsep.join([str(first), str(tmp_path / "absent.yaml"), str(kube_cluster.kubeconfig)])
    conn = load_connection(environ={**env, "KUBECONFIG": listed})
    assert (conn.context, conn.namespace, conn.user, conn.server) == ("mine", ns, "admin", kube_cluster.server)
    assert conn.source == f"{first}, {kube_cluster.kubeconfig}"  # the files it read, the absent one skipped
    with KubeApi(conn) as kube:
        kube.apply("services", service("merged"))
        assert names(kube.list("services")[0]) == ["merged"]
    # The first file that names a cluster wins it; current-context still comes from the first file setting one.
    shadow = write(tmp_path / "shadow.yaml", {"clusters": [{"name": "test", "cluster": {
        "server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True}}]})
    conn = load_connection(environ={**env, "KUBECONFIG": os.pathsep.join([str(shadow), listed])})
    assert (conn.server, conn.context) == ("https://127.0.0.1:9", "mine")
    # The admin file first: its current-context and its (identical) entries win.
    conn = load_connection(environ={**env, "KUBECONFIG": os.pathsep.join([str(kube_cluster.kubeconfig), str(first)])})
    assert (conn.context, conn.namespace) == ("test", "default")
    # KUBECONFIG wins over ~/.kube/config; ~/.kube/config is used without it
    home = Path(env["HOME"])
    write(home / ".kube" / "config", {**admin(kube_cluster), "contexts": [
        {"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "from-home"}}]})
    assert load_connection(environ=env).namespace == "from-home"
    assert load_connection(environ={**env, "KUBECONFIG": listed}).namespace == ns


def test_context_choosing_another_namespace(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path,
                                            ns: str) -> None:
    config = admin(kube_cluster)
    config["contexts"].append({"name": "team", "context": {"cluster": "test", "user": "admin", "namespace": ns}})
    path = write(tmp_path / "config", config)
    assert load_connection(path, environ=env).namespace == "default"
    conn = load_connection(path, context="team", environ=env)
    assert (conn.context, conn.namespace) == ("team", ns)
    assert load_connection(path, context="team", namespace="explicit", environ=env).namespace == "explicit"
    with KubeApi(conn) as kube:
        kube.apply("services", service("in-team"))
        assert kube.get("services", "in-team")["metadata"]["namespace"] == ns  # type: ignore[index]
    config["contexts"].append({"name": "bare", "context": {"cluster": "test", "user": "admin"}})
    assert load_connection(write(tmp_path / "c2", config), context="bare", environ=env).namespace == "default"


def test_certificates_as_paths_relative_to_the_kubeconfig(kube_cluster: KubeCluster, env: dict[str, str],
                                                          tmp_path: Path, ns: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    certs = tmp_path / "kube" / "certs"
    certs.mkdir(parents=True)
    for name in ("ca.crt", "admin.crt", "admin.key"):
        (certs / name).write_bytes((pki(kube_cluster) / name).read_bytes())
    path = write(tmp_path / "kube" / "config", kubeconfig(
        kube_cluster.server, {"certificate-authority": "certs/ca.crt"},
        {"client-certificate": "certs/admin.crt", "client-key": "./certs/admin.key"}, namespace=ns))
    monkeypatch.chdir("/")  # relative to the kubeconfig's folder, not to the working directory
    with KubeApi(load_connection(path, environ=env)) as kube:
        assert kube.apply("services", service("relative"))["metadata"]["namespace"] == ns


def test_client_certificate_data_goes_through_a_private_folder_deleted_at_once(
        kube_cluster: KubeCluster, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, int]] = []
    real = tempfile.mkdtemp

    def spy(*args: Any, **kwargs: Any) -> str:
        folder = real(*args, **kwargs)
        made.append((folder, stat.S_IMODE(os.stat(folder).st_mode)))
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    load_connection(kube_cluster.kubeconfig, environ=env)
    assert len(made) == 1 and made[0][1] == 0o700 and not Path(made[0][0]).exists()


def test_insecure_skip_tls_verify(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path, ns: str) -> None:
    path = write(tmp_path / "config", kubeconfig(kube_cluster.server, {"insecure-skip-tls-verify": True},
                                                 admin_user(kube_cluster), namespace=ns))
    conn = load_connection(path, environ=env)
    assert conn.insecure and conn.verify is not False  # an unverifying context: it carries the client certificate
    with KubeApi(conn) as kube:
        assert kube.apply("services", service("insecure"))["metadata"]["name"] == "insecure"
    # without a client certificate it is plain verify=False; the server then answers 401 for a bad token
    path = write(tmp_path / "token", kubeconfig(kube_cluster.server, {"insecure-skip-tls-verify": True},
                                                {"token": "not-a-token"}, namespace=ns))
    conn = load_connection(path, environ=env)
    assert conn.verify is False and conn.headers == {"Authorization": "Bearer not-a-token"}
    with KubeApi(conn) as kube:
        assert "did not accept the credentials of user u" in usage(lambda: kube.list("services")).message
    # kubectl refuses a CA with insecure-skip-tls-verify; so does fnpack
    both = write(tmp_path / "both", kubeconfig(kube_cluster.server, {"insecure-skip-tls-verify": True,
                                                                    **admin_ca(kube_cluster)}, None))
    assert "both insecure-skip-tls-verify and a certificate authority" in usage(
        lambda: load_connection(both, environ=env)).message


def test_a_wrong_ca_is_a_start_error(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path / "config", kubeconfig(kube_cluster.server,
                                                 {"certificate-authority": str(other_ca(tmp_path / "ca"))},
                                                 admin_user(kube_cluster)))
    with KubeApi(load_connection(path, environ=env)) as kube, pytest.raises(StartError) as caught:
        kube.list("services")
    assert caught.value.exit_code == 11
    assert f"the certificate of the Kubernetes API server at {kube_cluster.server} (context test) is not signed " \
           f"by the CA of the kubeconfig ({path})" in caught.value.message
    assert "certificate-authority" in caught.value.hint and "insecure-skip-tls-verify" in caught.value.hint


def test_a_client_certificate_of_another_ca_is_refused(kube_cluster: KubeCluster, env: dict[str, str],
                                                       tmp_path: Path) -> None:
    folder = other_ca(tmp_path / "other").parent
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for args in (["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "admin.key", "-out", "admin.csr",
                  "-subj", "/O=system:masters/CN=admin"],
                 ["x509", "-req", "-in", "admin.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                  "-out", "admin.crt", "-days", "1", "-extfile", "client.ext"]):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    path = write(tmp_path / "config", kubeconfig(kube_cluster.server, admin_ca(kube_cluster), {
        "client-certificate": "other/admin.crt", "client-key": "other/admin.key"}))
    with KubeApi(load_connection(path, environ=env)) as kube:
        error = usage(lambda: kube.get("services", "x"))
    assert error.message == (f"the Kubernetes API server at {kube_cluster.server} did not accept the credentials "
                             f"of user u (context test, from {path})")


def test_token_file_and_basic_auth(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("from-the-file\n")
    server = {"insecure-skip-tls-verify": True}
    conn = load_connection(write(tmp_path / "t", kubeconfig("https://k:6443", server, {
        "token": "inline", "tokenFile": "secrets/token"})), environ=env)
    assert conn.headers == {"Authorization": "Bearer from-the-file"}  # client-go: the file wins, read again later
    (tmp_path / "secrets" / "token").write_text("rotated")
    assert conn.token_refresh is not None and conn.token_refresh() == {"Authorization": "Bearer rotated"}
    conn = load_connection(write(tmp_path / "b", kubeconfig("k:6443", server, {"username": "me",
                                                                               "password": "pw"})), environ=env)
    assert conn.headers == {"Authorization": "Basic " + base64.b64encode(b"me:pw").decode()}
    assert conn.server == "https://k:6443" and conn.verify is False
    conn = load_connection(write(tmp_path / "anon", kubeconfig("https://k:6443/", server, None)), environ=env)
    assert (conn.server, conn.user, conn.headers) == ("https://k:6443", "(no user)", {})


def test_tls_server_name(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path, ns: str) -> None:
    cluster = {**admin_ca(kube_cluster), "tls-server-name": "localhost"}  # the server's certificate has it too
    path = write(tmp_path / "ok", kubeconfig(kube_cluster.server, cluster, admin_user(kube_cluster), namespace=ns))
    with KubeApi(load_connection(path, environ=env)) as kube:
        assert kube.list("services")[0] == []
    cluster["tls-server-name"] = "not-the-server.example"
    path = write(tmp_path / "bad", kubeconfig(kube_cluster.server, cluster, admin_user(kube_cluster)))
    with KubeApi(load_connection(path, environ=env)) as kube, pytest.raises(StartError) as caught:
        kube.list("services")
    assert "is not for that name" in caught.value.message and "tls-server-name" in caught.value.hint


def test_an_unreachable_server_is_a_start_error(kube_cluster: KubeCluster, env: dict[str, str],
                                                tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{free_port()}"
    path = write(tmp_path / "config", kubeconfig(server, admin_ca(kube_cluster), admin_user(kube_cluster)))
    with KubeApi(load_connection(path, environ=env)) as kube, pytest.raises(StartError) as caught:
        kube.get("services", "x")
    assert caught.value.exit_code == 11
    assert caught.value.message.startswith(f"cannot reach the Kubernetes API server at {server} (context test): ")


def test_proxies_from_the_environment_are_not_used(api: KubeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    with KubeApi(api.connection) as kube:
        assert kube.list("services")[0] == []


def test_no_kubeconfig_at_all(env: dict[str, str], tmp_path: Path) -> None:
    error = usage(lambda: load_connection(environ=env))
    assert error.message == ("no kubeconfig: KUBECONFIG is not set, ~/.kube/config does not exist and this is not "
                             "a pod") and error.hint == "set KUBECONFIG or pass --kubeconfig"
    absent = tmp_path / "absent"
    assert usage(lambda: load_connection(absent, environ=env)).message == f"the kubeconfig {absent} does not exist"
    error = usage(lambda: load_connection(environ={**env, "KUBECONFIG": f"{absent}{os.pathsep}{absent}2"}))
    assert f"KUBECONFIG names {absent}, {absent}2 and none of them exists" in error.message


def bad_configs(cluster: KubeCluster, tmp: Path) -> list[tuple[str, dict[str, Any] | str, str | None, str]]:
    """(id, kubeconfig, --context, what the message says; {path} is the file)."""
    good = admin(cluster)
    two = {**good, "contexts": good["contexts"] + [{"name": "second", "context": {"cluster": "test",
                                                                                  "user": "admin"}}]}
    user = good["users"][0]["user"]

    def with_user(**fields: Any) -> dict[str, Any]:
        return {**good, "users": [{"name": "admin", "user": {**user, **fields}}]}

    return [
        ("unknown context", two, "prod", "context 'prod' is not in {path} (its contexts: test, second)"),
        ("missing user", {**good, "contexts": [{"name": "test", "context": {"cluster": "test", "user": "ghost"}}]},
         None, "context 'test' in {path} names the user 'ghost', which is not in {path} (its users: admin)"),
        ("missing cluster", {**good, "contexts": [{"name": "test", "context": {"cluster": "gone", "user": "admin"}}]},
         None, "context 'test' in {path} names the cluster 'gone', which is not in {path} (its clusters: test)"),
        ("no current context", {**good, "current-context": ""}, None,
         "no context chosen: {path} sets no current-context (its contexts: test)"),
        ("not yaml", "clusters: [unclosed\n  - {", None, "the kubeconfig {path} is not YAML or JSON: "),
        ("not a mapping", "- just\n- a list\n", None, "the kubeconfig {path} is not a kubeconfig: its top level is"),
        ("bad base64", with_user(**{"client-key-data": "this is *not* base64"}), None,
         "client-key-data of the user 'admin' (context 'test' in {path}) is not base64"),
        ("base64 of no certificate", with_user(**{"client-certificate-data": base64.b64encode(b"hello").decode()}),
         None, "the client certificate of context 'test' in {path} cannot be loaded"),
        ("missing certificate file", {**good, "users": [{"name": "admin", "user": {
            "client-certificate": "nowhere/admin.crt", "client-key": "nowhere/admin.key"}}]}, None,
         f"client-certificate {tmp / 'nowhere' / 'admin.crt'} of the user 'admin' (context 'test' in {{path}}) "
         "does not exist"),
        ("certificate without key", {**good, "users": [{"name": "admin", "user": {
            "client-certificate-data": user["client-certificate-data"]}}]}, None,
         "the user 'admin' (context 'test' in {path}) has a client certificate without its key"),
        ("no server", {**good, "clusters": [{"name": "test", "cluster": {"insecure-skip-tls-verify": True}}]}, None,
         "the cluster 'test' (context 'test' in {path}) has no server"),
        ("bad CA", {**good, "clusters": [{"name": "test", "cluster": {
            "server": cluster.server, "certificate-authority-data": base64.b64encode(b"no pem").decode()}}]}, None,
         "the certificate authority of the cluster 'test' (context 'test' in {path}) is not a PEM certificate"),
        ("clusters not a list", {**good, "clusters": {"test": {}}}, None, "`clusters` in the kubeconfig {path} is "
                                                                           "not a list"),
        ("auth-provider", with_user(**{"auth-provider": {"name": "gcp"}, "client-certificate-data": None,
                                       "client-key-data": None}), None,
         "the user 'admin' (context 'test' in {path}) uses the auth-provider 'gcp'"),
    ]


def test_bad_kubeconfigs_are_usage_errors(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path) -> None:
    for i, (case, config, context, expected) in enumerate(bad_configs(kube_cluster, tmp_path)):
        path = write(tmp_path / f"config-{i}", config if isinstance(config, str) else json.dumps(config))
        with pytest.raises(UsageError) as caught:
            load_connection(path, context=context, environ=env)
        message = caught.value.message
        assert expected.format(path=path) in message, (case, message)
        assert caught.value.exit_code == 2 and caught.value.hint, case


def test_in_cluster_service_account(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("eyJhbGciOi.not-a-real-token\n")
    (sa / "ca.crt").write_bytes((pki(kube_cluster) / "ca.crt").read_bytes())
    (sa / "namespace").write_text("from-the-pod")
    host, port = kube_cluster.server.removeprefix("https://").rsplit(":", 1)
    pod = {**env, "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
           "FNPACK_SERVICEACCOUNT_DIR": str(sa)}
    conn = load_connection(environ=pod)
    assert (conn.server, conn.context, conn.user, conn.namespace) == (
        kube_cluster.server, "in-cluster", "serviceaccount", "from-the-pod")
    assert conn.source == "the in-cluster service account"
    assert conn.headers == {"Authorization": "Bearer eyJhbGciOi.not-a-real-token"}
    assert load_connection(environ=pod, namespace="mine").namespace == "mine"
    # The real server knows no such token: a 401, after reading the token file again once (it rotates).
    with KubeApi(conn) as kube:
        error = usage(lambda: kube.list("services"))
    assert error.message == (f"the Kubernetes API server at {kube_cluster.server} did not accept the credentials of "
                             "user serviceaccount (context in-cluster, from the in-cluster service account)")
    (sa / "token").unlink()
    assert "does not exist" in usage(lambda: load_connection(environ=pod)).message


# --- exec credential plugins -----------------------------------------------------------------------------------

CERT_PLUGIN = """
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
if info.get("kind") != "ExecCredential" or info["spec"].get("interactive") is not False:
    sys.exit("bad KUBERNETES_EXEC_INFO: " + os.environ["KUBERNETES_EXEC_INFO"])
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": {
    "clientCertificateData": open(os.environ["CERT"]).read(), "clientKeyData": open(os.environ["KEY"]).read()}}))
"""

TOKEN_PLUGIN = """
import json, os, pathlib
count = pathlib.Path(os.environ["COUNT"])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": f"t{n}", "expirationTimestamp": "2030-01-01T00:00:00Z"}}))
"""

FAILING_PLUGIN = """
import sys
sys.stderr.write("error: you are not logged in; run `cloud login`\\n")
sys.exit(3)
"""


def exec_config(cluster: KubeCluster, script: Path, env: dict[str, str], version: str = "v1",
                namespace: str = "default") -> dict[str, Any]:
    plugin = {"apiVersion": f"client.authentication.k8s.io/{version}", "command": sys.executable,
              "args": [str(script)], "env": [{"name": k, "value": v} for k, v in env.items()],
              "interactiveMode": "Never"}
    return kubeconfig(cluster.server, admin_ca(cluster), {"exec": plugin}, namespace=namespace)


def test_exec_plugin_with_a_client_certificate(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path,
                                               ns: str) -> None:
    script = write(tmp_path / "plugin.py", CERT_PLUGIN)
    path = write(tmp_path / "config", exec_config(kube_cluster, script, {
        "CERT": str(pki(kube_cluster) / "admin.crt"), "KEY": str(pki(kube_cluster) / "admin.key")}, namespace=ns))
    conn = load_connection(path, environ=env)
    assert conn.headers == {} and conn.token_refresh is None
    with KubeApi(conn) as kube:
        assert kube.apply("services", service("by-plugin"))["metadata"]["namespace"] == ns


def test_exec_plugin_token_is_refreshed_once_on_401(env: dict[str, str], tmp_path: Path) -> None:
    script = write(tmp_path / "plugin.py", TOKEN_PLUGIN)
    count = tmp_path / "count"
    config = kubeconfig("https://k8s.example:6443", {"insecure-skip-tls-verify": True}, None)
    config["users"] = [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                       "command": sys.executable, "args": [str(script)],
                                                       "env": [{"name": "COUNT", "value": str(count)}]}}}]
    config["contexts"][0]["context"]["user"] = "u"
    conn = load_connection(write(tmp_path / "config", config), environ=env)
    assert conn.headers == {"Authorization": "Bearer t1"} and conn.token_refresh is not None
    seen: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:  # accepts only the second token, as after an expiry
        seen.append(request.headers["authorization"])
        if request.headers["authorization"] != "Bearer t2":
            return httpx.Response(401, json={"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                             "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
        return httpx.Response(200, json=service("s"))

    with KubeApi(conn, transport=httpx.MockTransport(server)) as kube:
        assert kube.get("services", "s")["kind"] == "Service"  # type: ignore[index]
        assert kube.get("services", "s") is not None
    assert seen == ["Bearer t1", "Bearer t2", "Bearer t2"]


def test_a_failing_exec_plugin(kube_cluster: KubeCluster, env: dict[str, str], tmp_path: Path) -> None:
    script = write(tmp_path / "plugin.py", FAILING_PLUGIN)
    path = write(tmp_path / "config", exec_config(kube_cluster, script, {}))
    error = usage(lambda: load_connection(path, environ=env))
    assert f"the credential plugin `{sys.executable} {script}` of the user 'u' (context 'test' in {path}) failed " \
           "(exit code 3): error: you are not logged in; run `cloud login`" == error.message
    config = exec_config(kube_cluster, script, {})
    config["users"][0]["user"]["exec"].update(command="no-such-plugin-anywhere", installHint="brew install it")
    error = usage(lambda: load_connection(write(tmp_path / "c2", config), environ=env))
    assert "'no-such-plugin-anywhere' of the user 'u'" in error.message and "is not installed" in error.message
    assert error.hint == "brew install it"
    config["users"][0]["user"]["exec"].update(command=sys.executable, args=["-c", "print('hello')"])
    assert "printed no ExecCredential" in usage(lambda: load_connection(write(tmp_path / "c3", config),
                                                                        environ=env)).message
    config["users"][0]["user"]["exec"]["apiVersion"] = "client.authentication.k8s.io/v1alpha1"
    assert "has apiVersion 'client.authentication.k8s.io/v1alpha1'" in usage(
        lambda: load_connection(write(tmp_path / "c4", config), environ=env)).message


# --- server-side apply, create, delete, list -------------------------------------------------------------------

def test_apply_with_a_stale_resource_version_changes_nothing(api: KubeApi, ns: str) -> None:
    created = api.apply("services", service("svc", "img:1"))
    read = created["metadata"]["resourceVersion"]
    assert created["metadata"]["managedFields"][0]["manager"] == FIELD_MANAGER
    changed = api.apply("services", service("svc", "img:2"))  # another client's change after `read`
    stale = service("svc", "img:3")
    stale["metadata"]["resourceVersion"] = read
    with pytest.raises(ConflictError) as caught:
        api.apply("services", stale)
    assert caught.value.exit_code == 13
    assert caught.value.message == (f"Service svc in namespace {ns} (context test) changed since it was read "
                                    f"(resourceVersion {read}); nothing was changed")
    now = api.get("services", "svc")
    assert now is not None and image_of(now) == "img:2"
    assert now["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
    fresh = service("svc", "img:3")
    fresh["metadata"]["resourceVersion"] = now["metadata"]["resourceVersion"]
    assert image_of(api.apply("services", fresh)) == "img:3"
    assert image_of(api.get("services", "svc")) == "img:3"  # type: ignore[arg-type]


def test_create_of_an_existing_object_is_a_conflict(api: KubeApi, ns: str) -> None:
    created = api.create("services", service("once"))
    assert created["metadata"]["managedFields"][0]["manager"] == FIELD_MANAGER
    with pytest.raises(ConflictError) as caught:
        api.create("services", service("once", "img:other"))
    assert caught.value.message == f"Service once already exists in namespace {ns} (context test)"
    assert image_of(api.get("services", "once")) == image_of(created)  # type: ignore[arg-type]


def test_schema_invalid_objects_are_refused(api: KubeApi, ns: str) -> None:
    wrong_type = service("bad")
    wrong_type["spec"]["template"]["spec"]["containers"] = "not-a-list"
    unknown = service("bad")
    unknown["spec"]["replicas"] = 3  # Knative's Service has no such field: Strict refuses it instead of pruning
    for call in (lambda: api.apply("services", wrong_type), lambda: api.apply("services", unknown),
                 lambda: api.create("services", wrong_type)):
        error = usage(call)
        assert error.message.startswith(f"the cluster refused the Service bad in namespace {ns} (context test): ")
    assert "containers" in usage(lambda: api.apply("services", wrong_type)).message
    assert "replicas" in usage(lambda: api.apply("services", unknown)).message
    assert api.get("services", "bad") is None


def test_dry_run_changes_nothing(api: KubeApi) -> None:
    assert api.apply("services", service("dry"), dry_run=True)["metadata"]["name"] == "dry"
    assert api.create("services", service("dry"), dry_run=True)["metadata"]["name"] == "dry"
    assert api.get("services", "dry") is None
    before = api.apply("services", service("dry", "img:1"))
    assert image_of(api.apply("services", service("dry", "img:2"), dry_run=True)) == "img:2"
    after = api.get("services", "dry")
    assert after is not None and image_of(after) == "img:1"
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_list_with_a_label_selector(api: KubeApi) -> None:
    api.apply("services", service("a1", labels={"app": "a"}))
    api.apply("services", service("a2", labels={"app": "a", "tier": "x"}))
    api.apply("services", service("b1", labels={"app": "b"}))
    items, version = api.list("services", label_selector="app=a")
    assert names(items) == ["a1", "a2"] and version.isdigit()
    assert {(i["apiVersion"], i["kind"]) for i in items} == {(GROUP, "Service")}
    assert names(api.list("services", "app in (a,b),!tier")[0]) == ["a1", "b1"]
    assert names(api.list("services")[0]) == ["a1", "a2", "b1"]


def test_in_namespace_shares_the_connection(api: KubeApi, ns: str) -> None:
    other = api.in_namespace(ns + "-b")
    assert api.in_namespace(None) is api and api.in_namespace(ns) is api
    assert (other.namespace, api.namespace, other.connection.context) == (ns + "-b", ns, "test")
    assert other.apply("services", service("there"))["metadata"]["namespace"] == ns + "-b"
    assert api.get("services", "there") is None and other.get("services", "there") is not None


def test_an_error_while_reading_a_stream_is_a_start_error() -> None:
    def dropped(request: httpx.Request) -> httpx.Response:
        class Broken(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                yield b'{"type": "ADDED", "object": {"kind": "Service"}}\n'
                raise httpx.ReadError("connection reset by peer")

        return httpx.Response(200, stream=Broken())

    with KubeApi(mock_connection(), transport=httpx.MockTransport(dropped)) as kube:
        path = kube.path("pods", "p", group="v1", subresource="log")
        with pytest.raises(StartError) as caught, kube.stream("GET", path, params={"follow": "true"}) as response:
            list(response.iter_lines())
        assert caught.value.message == ("cannot reach the Kubernetes API server at https://k8s.example:6443 "
                                        "(context prod): connection reset by peer")
        # a dropped watch just ends, after the events it had
        assert list(kube.watch("services", resource_version="1")) == [{"type": "ADDED", "object": {"kind": "Service"}}]


def test_an_answer_that_is_not_json() -> None:
    def html(request: httpx.Request) -> httpx.Response:
        if "watch" in request.url.params:
            return httpx.Response(200, text='{"type": "ADDED", "object": {}}\n<html>oops</html>\n')
        return httpx.Response(200, text="<html>Sign in to the dashboard</html>")

    with KubeApi(mock_connection(), transport=httpx.MockTransport(html)) as kube:
        for call in (lambda: kube.get("services", "fn"), lambda: kube.list("services"),
                     lambda: kube.apply("services", service("fn")), lambda: list(kube.watch("services",
                                                                                             resource_version="1"))):
            with pytest.raises(FnpackError) as caught:
                call()
            assert "answered" in caught.value.message and "is not a Kubernetes object" in caught.value.message


def test_delete_then_delete_again(api: KubeApi) -> None:
    api.apply("services", service("gone"))
    assert api.delete("services", "gone") is True
    assert api.get("services", "gone") is None
    assert api.delete("services", "gone") is False


def test_the_core_api_is_not_served_by_the_test_server(api: KubeApi, kube_cluster: KubeCluster) -> None:
    logs = api.path("pods", "fn-abc", group="v1", subresource="log")
    assert logs == f"/api/v1/namespaces/{api.namespace}/pods/fn-abc/log"
    expected = f"the cluster at {kube_cluster.server} (context test) serves no pods (the core API /api/v1)"
    for call in (lambda: api.request("GET", api.path("pods", group="v1")), lambda: api.get("pods", "x", group="v1")):
        with pytest.raises(NotFoundError) as caught:
            call()
        assert caught.value.message == expected
    with pytest.raises(NotFoundError) as caught, api.stream("GET", logs, params={"follow": "true"}):
        pass
    assert "serves no pods/log" in caught.value.message
    with pytest.raises(NotFoundError) as caught:
        api.apply("domainmappings", {**service("x"), "kind": "DomainMapping"})
    assert caught.value.message == (f"the cluster at {kube_cluster.server} (context test) serves no "
                                    "domainmappings.serving.knative.dev (is Knative Serving installed?)")


def test_stream_and_request(api: KubeApi) -> None:
    api.apply("services", service("raw"))
    with api.stream("GET", api.path("services", "raw")) as response:
        assert json.loads(response.read())["metadata"]["name"] == "raw"
    assert api.request("GET", api.path("services")).json()["kind"] == "ServiceList"
    with pytest.raises(NotFoundError) as caught:
        api.request("DELETE", api.path("services", "not-there"))
    assert caught.value.message == f"services.serving.knative.dev not-there not found in namespace {api.namespace} " \
                                   "(context test)"


# --- watch -----------------------------------------------------------------------------------------------------

def test_watch_sees_added_and_modified_and_stops_at_its_timeout(api: KubeApi) -> None:
    _, version = api.list("services")
    api.apply("services", service("w", "img:1"))
    api.apply("services", service("w", "img:2"))
    api.apply("services", service("other"))
    started = time.monotonic()
    events = list(api.watch("services", resource_version=version, field_selector="metadata.name=w", timeout=1))
    took = time.monotonic() - started
    assert [(e["type"], image_of(e["object"])) for e in events] == [("ADDED", "img:1"), ("MODIFIED", "img:2")]
    assert 0.9 < took < 8
    events = list(api.watch("services", resource_version=version, label_selector="app=none", timeout=1))
    assert events == []


def test_watch_from_a_too_old_version_expires(api: KubeApi) -> None:
    with pytest.raises(WatchExpired) as caught:
        next(api.watch("services", resource_version="1", timeout=5))
    assert "too old resource version" in caught.value.message and isinstance(caught.value, FnpackError)


def test_watch_answered_410_gone_expires() -> None:
    # kube-apiserver may also answer 410 to the request itself, not as an ERROR event of the stream
    def gone(request: httpx.Request) -> httpx.Response:
        return httpx.Response(410, json={"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                         "message": "too old resource version: 5 (900)", "reason": "Expired",
                                         "code": 410})

    with KubeApi(mock_connection(), transport=httpx.MockTransport(gone)) as kube, pytest.raises(WatchExpired):
        list(kube.watch("services", resource_version="5"))


# --- what the test server cannot show --------------------------------------------------------------------------

def mock_connection() -> Connection:
    return Connection(server="https://k8s.example:6443", namespace="team-a", context="prod", user="deployer",
                      source="/home/me/.kube/config", verify=True, headers={"Authorization": "Bearer t"})


def test_a_403_names_the_verb_the_resource_and_the_namespace() -> None:
    # The test server allows everything (its admin is system:masters), so the 403 is played: this is the body a
    # real kube-apiserver answers when RBAC refuses a request.
    def forbidden(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(403, json={
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden",
            "message": f'services.serving.knative.dev "{name}" is forbidden: User "system:serviceaccount:team-a:ci" '
                       'cannot patch resource "services" in API group "serving.knative.dev" in the namespace "team-a"',
            "details": {"name": name, "group": "serving.knative.dev", "kind": "services"}, "code": 403})

    with KubeApi(mock_connection(), transport=httpx.MockTransport(forbidden)) as kube:
        calls = {"get": lambda: kube.get("services", "fn"), "list": lambda: kube.list("services"),
                 "watch": lambda: list(kube.watch("services", resource_version="1")),
                 "create": lambda: kube.create("services", service("fn")),
                 "patch": lambda: kube.apply("services", service("fn")),
                 "delete": lambda: kube.delete("services", "fn")}
        for verb, call in calls.items():
            with pytest.raises(AccessDeniedError) as caught:
                call()
            error = caught.value
            assert error.permission == f"{verb} services.serving.knative.dev" and error.exit_code == 2
            assert error.message.startswith(f"access denied: user deployer may not {verb} "
                                            "services.serving.knative.dev in namespace team-a (context prod): ")
            assert "knative/rbac.yaml" in error.hint and error.to_dict()["permission"] == error.permission
        with pytest.raises(AccessDeniedError) as caught:
            kube.request("GET", kube.path("pods", "fn-1", group="v1", subresource="log"))
        assert caught.value.permission == "get pods/log"


def test_what_is_sent() -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=json.loads(request.content) if request.content else {"items": []})

    with KubeApi(mock_connection(), transport=httpx.MockTransport(record)) as kube:
        kube.apply("services", service("fn"), dry_run=True)
        kube.apply("routes", {"apiVersion": GROUP, "kind": "Route", "metadata": {"name": "r", "namespace": "x"}},
                   force=False)
        kube.create("services", service("fn"))
    apply, route, create = sent
    assert (apply.method, apply.url.path) == ("PATCH", "/apis/serving.knative.dev/v1/namespaces/team-a/services/fn")
    assert dict(apply.url.params) == {"fieldManager": "fnpack", "force": "true", "fieldValidation": "Strict",
                                      "dryRun": "All"}
    assert apply.headers["content-type"] == "application/apply-patch+yaml"
    assert json.loads(apply.content) == service("fn")
    assert apply.headers["user-agent"] == f"fnpack/{__version__}" and apply.headers["authorization"] == "Bearer t"
    assert route.url.path == "/apis/serving.knative.dev/v1/namespaces/x/routes/r" and "force" not in route.url.params
    assert (create.method, create.url.path) == ("POST", "/apis/serving.knative.dev/v1/namespaces/team-a/services")
    assert create.url.params["fieldManager"] == "fnpack"
