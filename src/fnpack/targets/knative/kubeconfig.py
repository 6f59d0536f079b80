"""Where the Kubernetes API server is and who fnpack is to it, found as kubectl finds them.

An explicit kubeconfig path, else `KUBECONFIG` (files separated by os.pathsep, merged as kubectl merges:
the first file that names a cluster, user or context wins, current-context comes from the first file that
sets it), else ~/.kube/config, else the pod's service account. No Kubernetes client library: the result
is a `Connection` that `kube.KubeApi` hands to httpx.

Every mistake in what is found is one UsageError naming the file, the context and what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shlex
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fnpack.errors import UsageError

SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
IN_CLUSTER = "in-cluster"
IN_CLUSTER_SOURCE = "the in-cluster service account"
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_TIMEOUT = 60.0  # seconds a credential plugin may take (kubectl waits as long as it takes; we do not hang)
KUBECONFIG_HINT = "set KUBECONFIG or pass --kubeconfig"
CONTEXT_HINT = "pass --context NAME (one of the contexts listed), or `kubectl config use-context NAME`"


@dataclass(frozen=True)
class Connection:
    """An API server and the credentials for it. `verify` is an SSLContext holding the CA and any client
    certificate; False only for insecure-skip-tls-verify without a client certificate (an insecure one
    with a client certificate is an SSLContext that verifies nothing: httpx's False would drop the cert)."""

    server: str  # https://HOST:PORT, no trailing slash
    namespace: str
    context: str  # the kubeconfig context's name; "in-cluster" for a service account
    user: str  # the kubeconfig user entry's name (for messages); "serviceaccount" in-cluster
    source: str  # the kubeconfig file(s), or "the in-cluster service account"
    verify: ssl.SSLContext | bool
    headers: Mapping[str, str]  # Authorization, when a token or a password is used
    token_refresh: Callable[[], Mapping[str, str]] | None = None  # fresh headers (exec plugin, token file)
    tls_server_name: str | None = None  # the name the server's certificate is checked against (and SNI)

    @property
    def insecure(self) -> bool:
        """True when the server's certificate is not checked (insecure-skip-tls-verify)."""
        return self.verify is False or (isinstance(self.verify, ssl.SSLContext)
                                        and self.verify.verify_mode == ssl.CERT_NONE)


def load_connection(kubeconfig: str | Path | None = None, context: str | None = None,
                    namespace: str | None = None, environ: Mapping[str, str] | None = None) -> Connection:
    """The connection kubectl would use; `context` and `namespace` override the kubeconfig's."""
    env = os.environ if environ is None else environ
    files = _kubeconfig_files(kubeconfig, env)
    if files is None:
        return _in_cluster(env, namespace)
    return _from_kubeconfig(_Merged.load(files), context, namespace, env)


# --- finding and merging the files ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    """A named cluster, user or context and the file that defined it (its relative paths resolve there)."""

    name: str
    body: dict[str, Any]
    file: Path


class _Merged:
    """kubectl's merge of several kubeconfig files: the first file that sets a name (or current-context) wins."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.source = ", ".join(str(f) for f in files)
        self.entries: dict[str, dict[str, _Entry]] = {"clusters": {}, "users": {}, "contexts": {}}
        self.current: str | None = None

    @classmethod
    def load(cls, files: list[Path]) -> _Merged:
        merged = cls(files)
        for path in files:
            data = _read_yaml(path)
            for key, entries in merged.entries.items():
                for entry in _named_entries(data, key, path):
                    entries.setdefault(entry.name, entry)
            current = data.get("current-context")
            if merged.current is None and isinstance(current, str) and current:
                merged.current = current
        return merged

    def names(self, key: str) -> str:
        return ", ".join(self.entries[key]) or "none"


def _expand(path: str, env: Mapping[str, str]) -> Path:
    if path == "~" or path.startswith("~/"):
        return Path(env.get("HOME") or Path.home()) / path[2:]
    return Path(path)


def _kubeconfig_files(kubeconfig: str | Path | None, env: Mapping[str, str]) -> list[Path] | None:
    """The files to merge, or None for in-cluster."""
    if kubeconfig is not None and str(kubeconfig):
        path = _expand(str(kubeconfig), env)
        if not path.is_file():
            raise UsageError(f"the kubeconfig {path} does not exist" if not path.exists()
                             else f"the kubeconfig {path} is not a file", hint="pass the path of a kubeconfig file")
        return [path]
    if env.get("KUBECONFIG"):
        listed = list(dict.fromkeys(_expand(p, env) for p in env["KUBECONFIG"].split(os.pathsep) if p))
        existing = [p for p in listed if p.is_file()]  # kubectl skips the files of the list that do not exist
        if not existing:
            raise UsageError(f"no kubeconfig: KUBECONFIG names {', '.join(map(str, listed))} and none of them "
                             "exists", hint="fix KUBECONFIG or pass --kubeconfig")
        return existing
    default = _expand("~/.kube/config", env)
    if default.is_file():
        return [default]
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the kubeconfig {path}: {exc}", hint=KUBECONFIG_HINT) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"the kubeconfig {path} is not YAML or JSON: {problem}{where}",
                         hint="fix the file, or point KUBECONFIG / --kubeconfig at another") from None
    if data is None:  # an empty file is an empty kubeconfig, as for kubectl
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"the kubeconfig {path} is not a kubeconfig: its top level is a {type(data).__name__}, "
                         "not a mapping of clusters, users and contexts", hint=KUBECONFIG_HINT)
    return data


def _named_entries(data: dict[str, Any], key: str, path: Path) -> list[_Entry]:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise UsageError(f"`{key}` in the kubeconfig {path} is not a list", hint="see `kubectl config view`")
    inner_key = key[:-1]  # clusters: [{name, cluster}], users: [{name, user}], contexts: [{name, context}]
    entries = []
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise UsageError(f"{key}[{i}] in the kubeconfig {path} has no name", hint="see `kubectl config view`")
        body = item.get(inner_key) or {}
        if not isinstance(body, dict):
            raise UsageError(f"the {inner_key} {name!r} in the kubeconfig {path} is not a mapping",
                             hint="see `kubectl config view`")
        entries.append(_Entry(name, body, path))
    return entries


# --- one context -----------------------------------------------------------------------------------------------

def _from_kubeconfig(merged: _Merged, context: str | None, namespace: str | None,
                     env: Mapping[str, str]) -> Connection:
    name = context or merged.current
    if not name:
        raise UsageError(f"no context chosen: {merged.source} sets no current-context (its contexts: "
                         f"{merged.names('contexts')})", hint=CONTEXT_HINT)
    ctx = merged.entries["contexts"].get(name)
    if ctx is None:
        raise UsageError(f"context {name!r} is not in {merged.source} (its contexts: {merged.names('contexts')})",
                         hint=CONTEXT_HINT)
    where = f"context {name!r} in {ctx.file}"
    cluster = _reference(merged, ctx, "cluster", where)
    user_name = ctx.body.get("user")
    # A context without a user is anonymous, as for kubectl; one naming a user that is not there is a mistake.
    user = _reference(merged, ctx, "user", where) if user_name else None
    ns = namespace or _string(ctx.body, "namespace", where) or "default"
    server, tls_server_name = _server(cluster, where)
    auth = _Auth(user, where, env, cluster_info=_cluster_info(cluster, server))
    verify = _ssl_context(server, cluster, auth, where)
    return Connection(server=server, namespace=ns, context=name, user=user.name if user else "(no user)",
                      source=merged.source, verify=verify, headers=auth.headers, token_refresh=auth.refresh,
                      tls_server_name=tls_server_name)


def _reference(merged: _Merged, ctx: _Entry, kind: str, where: str) -> _Entry:
    """The cluster or user a context names."""
    ref = ctx.body.get(kind)
    if not isinstance(ref, str) or not ref:
        raise UsageError(f"{where} names no {kind}", hint=f"add `{kind}: NAME` to the context, or {CONTEXT_HINT}")
    entry = merged.entries[kind + "s"].get(ref)
    if entry is None:
        raise UsageError(f"{where} names the {kind} {ref!r}, which is not in {merged.source} (its {kind}s: "
                         f"{merged.names(kind + 's')})", hint=f"add the {kind}, or {CONTEXT_HINT}")
    return entry


def _string(body: Mapping[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UsageError(f"{key} of {where} is a {type(value).__name__}, not a string",
                         hint="see `kubectl config view`")
    return value


def _server(cluster: _Entry, where: str) -> tuple[str, str | None]:
    what = f"the cluster {cluster.name!r} ({where})"
    server = _string(cluster.body, "server", what)
    if not server:
        raise UsageError(f"{what} has no server", hint="add `server: https://HOST:PORT` to the cluster")
    server = server.rstrip("/")
    if "://" not in server:  # kubectl takes a bare HOST:PORT as https
        server = "https://" + server
    if not server.startswith(("https://", "http://")):
        raise UsageError(f"the server {server!r} of {what} is not an http(s) URL", hint="use https://HOST:PORT")
    return server, _string(cluster.body, "tls-server-name", what)


def _cluster_info(cluster: _Entry, server: str) -> dict[str, Any]:
    """The `spec.cluster` an exec plugin gets with provideClusterInfo (client.authentication.k8s.io)."""
    info: dict[str, Any] = {"server": server}
    for key in ("certificate-authority-data", "tls-server-name", "insecure-skip-tls-verify", "proxy-url"):
        if cluster.body.get(key) is not None:
            info[key] = cluster.body[key]
    extensions = cluster.body.get("extensions")
    extension = next((e.get("extension") for e in (extensions if isinstance(extensions, list) else [])
                      if isinstance(e, dict) and e.get("name") == "client.authentication.k8s.io/exec"), None)
    if extension is not None:
        info["config"] = extension
    return info


def _b64(body: Mapping[str, Any], key: str, what: str) -> bytes | None:
    value = _string(body, key, what)
    if value is None:
        return None
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{key} of {what} is not base64", hint=f"{key} holds the base64 of a PEM file; "
                         "`base64 -w0 FILE` makes it, or use the key without -data and a path") from None


def _file(body: Mapping[str, Any], key: str, entry: _Entry, what: str) -> bytes | None:
    """A path field, read; relative paths are relative to the kubeconfig file that holds them."""
    value = _string(body, key, what)
    if value is None:
        return None
    path = entry.file.parent / Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror})"
        raise UsageError(f"{key} {path} of {what} {reason}", hint="fix the path (relative paths are relative "
                         "to the kubeconfig's folder)") from None


def _pem_or_file(entry: _Entry, key: str, what: str) -> bytes | None:
    """`key-data` (base64) or `key` (a path): kubectl takes the data when both are set."""
    return _b64(entry.body, key + "-data", what) or _file(entry.body, key, entry, what)


# --- credentials -----------------------------------------------------------------------------------------------

class _Auth:
    """A kubeconfig user's credentials: headers, a client certificate, and how to refresh them."""

    def __init__(self, user: _Entry | None, where: str, env: Mapping[str, str], cluster_info: dict[str, Any]) -> None:
        self.headers: dict[str, str] = {}
        self.cert: tuple[bytes, bytes] | None = None  # (certificate PEM, key PEM)
        self.refresh: Callable[[], Mapping[str, str]] | None = None
        if user is None:
            return
        what = f"the user {user.name!r} ({where})"
        body = user.body
        if body.get("auth-provider"):
            provider = body["auth-provider"].get("name", "?") if isinstance(body["auth-provider"], dict) else "?"
            raise UsageError(f"{what} uses the auth-provider {provider!r}, which kubectl no longer supports and "
                             "neither does fnpack", hint="use the exec credential plugin of your cloud "
                             "(e.g. gke-gcloud-auth-plugin, kubelogin, aws eks get-token)")
        cert = _pem_or_file(user, "client-certificate", what)
        key = _pem_or_file(user, "client-key", what)
        if (cert is None) != (key is None):
            missing = "client-key" if key is None else "client-certificate"
            raise UsageError(f"{what} has a client certificate without its key" if key is None
                             else f"{what} has a client key without its certificate",
                             hint=f"add {missing} (or {missing}-data)")
        if cert is not None and key is not None:
            self.cert = (cert, key)
        token = _string(body, "token", what)
        token_file = _string(body, "tokenFile", what)
        if token_file:  # client-go: the file's token wins over `token`, and the file is read again later
            path = user.file.parent / Path(token_file).expanduser()
            token = _read_token(path, what)
            self.refresh = lambda: {"Authorization": f"Bearer {_read_token(path, what)}"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif body.get("username") is not None or body.get("password") is not None:
            basic = f"{_string(body, 'username', what) or ''}:{_string(body, 'password', what) or ''}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
        exec_spec = body.get("exec")
        if exec_spec and not token and self.cert is None:
            if not isinstance(exec_spec, dict):
                raise UsageError(f"exec of {what} is not a mapping", hint="see `kubectl config view`")
            plugin = _ExecPlugin(exec_spec, user, what, env, cluster_info)
            status = plugin.run()
            if status.get("token"):
                self.headers["Authorization"] = f"Bearer {status['token']}"
                self.refresh = lambda: {"Authorization": f"Bearer {plugin.run().get('token', '')}"}
            else:
                self.cert = (status["clientCertificateData"].encode(), status["clientKeyData"].encode())


def _read_token(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc})"
        raise UsageError(f"the token file {path} of {what} {reason}", hint="fix tokenFile") from None


class _ExecPlugin:
    """A client.authentication.k8s.io exec credential plugin (gke-gcloud-auth-plugin, aws eks get-token, ...)."""

    def __init__(self, spec: dict[str, Any], user: _Entry, what: str, env: Mapping[str, str],
                 cluster_info: dict[str, Any]) -> None:
        self.what = what
        self.api_version = spec.get("apiVersion")
        if self.api_version not in EXEC_API_VERSIONS:
            raise UsageError(f"the exec plugin of {what} has apiVersion {self.api_version!r}; fnpack runs "
                             f"{' and '.join(EXEC_API_VERSIONS)} plugins", hint="set exec.apiVersion to "
                             f"{EXEC_API_VERSIONS[0]} if the plugin supports it, or update the plugin")
        command = spec.get("command")
        if not isinstance(command, str) or not command:
            raise UsageError(f"the exec plugin of {what} has no command", hint="add exec.command")
        if os.sep in command and not os.path.isabs(command):  # client-go resolves these against the kubeconfig
            command = str(user.file.parent / command)
        args = spec.get("args") or []
        extra = spec.get("env") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise UsageError(f"exec.args of {what} is not a list of strings", hint="see `kubectl config view`")
        if not isinstance(extra, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                  for e in extra):
            raise UsageError(f"exec.env of {what} is not a list of {{name, value}}", hint="see `kubectl config view`")
        self.argv = [command, *args]
        self.install_hint = spec.get("installHint") if isinstance(spec.get("installHint"), str) else None
        info: dict[str, Any] = {"interactive": False}  # fnpack gives plugins no terminal (stdin is closed)
        if spec.get("provideClusterInfo"):
            info["cluster"] = cluster_info
        self.env = {**env, **{e["name"]: str(e.get("value", "")) for e in extra},
                    "KUBERNETES_EXEC_INFO": json.dumps({"apiVersion": self.api_version, "kind": "ExecCredential",
                                                        "spec": info})}

    def run(self) -> dict[str, Any]:
        """The ExecCredential's status: a token, or clientCertificateData and clientKeyData (PEM)."""
        shown = shlex.join(self.argv)
        try:
            done = subprocess.run(self.argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=EXEC_TIMEOUT)
        except FileNotFoundError:
            raise UsageError(f"the credential plugin {self.argv[0]!r} of {self.what} is not installed (not found)",
                             hint=self.install_hint or "install it, or fix exec.command in the kubeconfig") from None
        except subprocess.TimeoutExpired:
            raise UsageError(f"the credential plugin `{shown}` of {self.what} did not answer within "
                             f"{EXEC_TIMEOUT:.0f} s", hint="run it yourself to see what it waits for") from None
        except OSError as exc:
            raise UsageError(f"the credential plugin `{shown}` of {self.what} cannot run: {exc}",
                             hint=self.install_hint or "fix exec.command in the kubeconfig") from None
        stderr = done.stderr.decode(errors="replace").strip()[-2000:]
        if done.returncode != 0:
            raise UsageError(f"the credential plugin `{shown}` of {self.what} failed (exit code {done.returncode})"
                             + (f": {stderr}" if stderr else ""),
                             hint="run the command yourself: you may have to log in again")
        try:
            credential = json.loads(done.stdout)
        except ValueError:
            credential = None
        status = credential.get("status") if isinstance(credential, dict) else None
        if not isinstance(status, dict) or credential.get("kind") != "ExecCredential":
            raise UsageError(f"the credential plugin `{shown}` of {self.what} printed no ExecCredential with a "
                             f"status: {done.stdout[:300].decode(errors='replace')!r}",
                             hint="the plugin must print a client.authentication.k8s.io ExecCredential as JSON")
        has_token = isinstance(status.get("token"), str) and status["token"]
        has_cert = all(isinstance(status.get(k), str) and status[k] for k in ("clientCertificateData", "clientKeyData"))
        if not has_token and not has_cert:
            raise UsageError(f"the ExecCredential of the credential plugin `{shown}` of {self.what} has neither "
                             "status.token nor status.clientCertificateData and clientKeyData",
                             hint="check the plugin's arguments and that you are logged in")
        return status


# --- TLS -------------------------------------------------------------------------------------------------------

def _ssl_context(server: str, cluster: _Entry, auth: _Auth, where: str) -> ssl.SSLContext | bool:
    what = f"the cluster {cluster.name!r} ({where})"
    insecure = cluster.body.get("insecure-skip-tls-verify") is True
    ca = _pem_or_file(cluster, "certificate-authority", what)
    if insecure and ca is not None:  # kubectl refuses the pair too
        raise UsageError(f"{what} sets both insecure-skip-tls-verify and a certificate authority",
                         hint="remove one of them (kubectl refuses the pair too)")
    if server.startswith("http://") or (insecure and auth.cert is None):
        return False if insecure else True
    if insecure:  # still a context: it carries the client certificate
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            # Only the kubeconfig's CA when it names one (PEM text, or one DER certificate: cadata tells them
            # apart by str / bytes); the system's CAs when it names none, as for kubectl.
            context = ssl.create_default_context(cadata=None if ca is None else
                                                 ca.decode("ascii") if b"-----BEGIN" in ca else ca)
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise UsageError(f"the certificate authority of {what} is not a PEM certificate ({exc})",
                             hint="certificate-authority(-data) must hold the cluster's CA certificate") from None
    if auth.cert is not None:
        _load_client_cert(context, *auth.cert, what=f"the client certificate of {where}")
    return context


def _load_client_cert(context: ssl.SSLContext, cert: bytes, key: bytes, what: str) -> None:
    """ssl only loads certificates from files: the data goes to a private folder only for as long as that takes."""

    def encrypted() -> bytes:
        raise UsageError(f"the key of {what} is encrypted", hint="kubeconfig keys must not have a passphrase")

    folder = tempfile.mkdtemp(prefix="fnpack-kube-")  # mode 0700
    try:
        paths = []
        for name, data in (("client.crt", cert), ("client.key", key)):
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            paths.append(path)
        context.load_cert_chain(paths[0], paths[1], password=encrypted)
    except ssl.SSLError as exc:
        raise UsageError(f"{what} cannot be loaded: {exc.reason or exc} (a PEM certificate and its key?)",
                         hint="client-certificate(-data) and client-key(-data) must be PEM and belong together") \
            from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- in a pod --------------------------------------------------------------------------------------------------

def _in_cluster(env: Mapping[str, str], namespace: str | None) -> Connection:
    folder = Path(env.get("FNPACK_SERVICEACCOUNT_DIR") or SERVICEACCOUNT_DIR)
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token_path = folder / "token"
    if not host or not port:
        raise UsageError("no kubeconfig: KUBECONFIG is not set, ~/.kube/config does not exist and this is not a pod",
                         hint=KUBECONFIG_HINT)
    if not token_path.is_file():
        raise UsageError(f"no kubeconfig, and no service account token: KUBERNETES_SERVICE_HOST is set but "
                         f"{token_path} does not exist", hint=f"{KUBECONFIG_HINT}, or mount the pod's service "
                         "account token (automountServiceAccountToken)")
    what = IN_CLUSTER_SOURCE
    token = _read_token(token_path, what)
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    context = ssl.create_default_context()
    ca = folder / "ca.crt"
    if ca.is_file():
        try:
            context = ssl.create_default_context(cafile=str(ca))
        except ssl.SSLError as exc:
            raise UsageError(f"{ca} of {what} is not a PEM certificate ({exc})", hint="check the pod's mount") from None
    try:
        ns_of_pod = (folder / "namespace").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        ns_of_pod = ""
    ns = namespace or env.get("POD_NAMESPACE") or ns_of_pod or "default"
    # The kubelet rotates bound service account tokens: read the file again when the server refuses the old one.
    return Connection(server=server, namespace=ns, context=IN_CLUSTER, user="serviceaccount", source=what,
                      verify=context, headers={"Authorization": f"Bearer {token}"},
                      token_refresh=lambda: {"Authorization": f"Bearer {_read_token(token_path, what)}"})
