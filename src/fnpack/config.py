"""The user's configuration: named contexts, as kubectl's contexts and faas-cli's login keep them.

One YAML file per user, `$FNPACK_CONFIG`, else `$XDG_CONFIG_HOME/fnpack/config.yaml` (default
`~/.config/fnpack/config.yaml`), mode 0600 (a context may hold a token):

    current: local
    contexts:
      local:      {target: local, url: "http://127.0.0.1:8080", state_dir: /home/me/.../.fnpack}
      staging:    {target: local, url: "https://fnpack.example.com", token: "..."}   # fnpack login
      prod:       {target: aws-lambda, region: eu-west-1, role: "arn:...", bucket: my-artifacts}

A context names its target and that target's settings (the fields of its settings model, checked by
it). Where a command's settings come from, first wins: flags, `FNPACK_*` variables, the context
(`--context NAME`, else `FNPACK_CONTEXT`, else `current`), the spec's section in the archive, defaults.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fnpack.errors import OutputError, UsageError
from fnpack.targets.catalog import TARGETS, target_info

NAME_HINT = "context names are letters, digits, '.', '_' and '-', e.g. local or prod-eu"


def config_path() -> Path:
    explicit = os.environ.get("FNPACK_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fnpack" / "config.yaml"


@dataclass
class Context:
    name: str
    target: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> dict[str, Any]:
        return {"target": self.target, **self.settings}

    def shown(self) -> dict[str, Any]:
        """Its settings with secrets masked."""
        return {k: ("***" if "token" in k and v else v) for k, v in self.settings.items()}

    def where(self) -> str:
        s = self.settings
        return str(s.get("url") or s.get("region") or s.get("state_dir") or "")


@dataclass
class Config:
    path: Path
    current: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_path()
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"cannot read the fnpack configuration {path}: {exc}",
                             hint="fix or remove the file (fnpack context set recreates it)") from None
        data = data or {}
        if not isinstance(data, dict) or not isinstance(data.get("contexts") or {}, dict):
            raise UsageError(f"{path} is not an fnpack configuration (expected `current:` and `contexts:`)",
                             hint="fix or remove the file")
        contexts = {}
        for name, entry in (data.get("contexts") or {}).items():
            if not isinstance(entry, dict) or not isinstance(entry.get("target"), str):
                raise UsageError(f"{path}: context {name!r} has no `target:`", hint=f"targets are: {', '.join(TARGETS)}")
            settings = {k: v for k, v in entry.items() if k != "target"}
            contexts[str(name)] = Context(str(name), entry["target"], settings)
        current = data.get("current")
        return cls(path, current if isinstance(current, str) else None, contexts)

    def save(self) -> None:
        """Written whole to a temporary file, then renamed: a crash never leaves half a configuration."""
        data = {"current": self.current, "contexts": {n: c.to_yaml() for n, c in sorted(self.contexts.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temp = tempfile.mkstemp(prefix=".config-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp: mode 0600 from the start
                    yaml.safe_dump(data, f, sort_keys=False)
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise OutputError(f"cannot write the fnpack configuration {self.path}: {exc.strerror}",
                              hint="set FNPACK_CONFIG to a writable file") from None

    def get(self, name: str) -> Context:
        if name not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none yet"
            raise UsageError(f"no context named {name!r} in {self.path} (contexts: {known})",
                             hint="`fnpack context list` shows them; `fnpack context set NAME --target ...` adds one")
        return self.contexts[name]

    def chosen(self, name: str | None = None) -> Context | None:
        """The context a command uses: `name` (--context), else FNPACK_CONTEXT, else the current one."""
        explicit = name or os.environ.get("FNPACK_CONTEXT") or None
        if explicit:
            return self.get(explicit)
        return self.contexts.get(self.current) if self.current else None

    def put(self, context: Context, use: bool = False) -> None:
        """Add or replace a context (its settings checked by its target's model)."""
        check_name(context.name)
        info = target_info(context.target)
        if info.settings:  # a target not deployable yet has no model: its settings are kept as given
            info.settings_model().layer(context.settings, f"context {context.name}")
        self.contexts[context.name] = context
        if use or self.current is None:
            self.current = context.name


def check_name(name: str) -> str:
    if not name or len(name) > 63 or not all(c.isalnum() or c in "._-" for c in name) or not name.isascii():
        raise UsageError(f"{name!r} is not a context name", hint=NAME_HINT)
    return name


def register_platform(url: str, state_dir: Path, name: str | None = None) -> str:
    """Record a local platform `fnpack serve` or `fnpack up` started; the context's name. Best effort:
    a configuration that cannot be written must not stop the platform."""
    name = name or ("local" if url.rstrip("/") == "http://127.0.0.1:8080" else f"local-{url.rsplit(':', 1)[-1]}")
    try:
        config = Config.load()
        existing = config.contexts.get(name)
        settings = {**(existing.settings if existing and existing.target == "local" else {}),
                    "url": url.rstrip("/"), "state_dir": str(state_dir.resolve())}
        settings.pop("token", None)  # the state folder's token file is the platform's own
        config.put(Context(name, "local", settings))
        config.save()
    except (UsageError, OutputError):
        return ""
    return name
