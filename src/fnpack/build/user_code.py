"""Checks that `features` and `score` name a module in the function folder that defines the callable.

The code is parsed, not run: its imports (Pillow, ...) are installed for the
target, not here. The smoke run imports and runs it inside the archive.
"""

from __future__ import annotations

import ast
from pathlib import Path

from fnpack.errors import UserCodeError


def check_callable(root: Path, ref: str, role: str) -> Path:
    module, _, attr = ref.partition(":")
    relative = Path(*module.split("."))
    candidates = [root / relative.with_suffix(".py"), root / relative / "__init__.py"]
    source_path = next((p for p in candidates if p.is_file()), None)
    if source_path is None:
        raise UserCodeError(f"{role} {ref!r}: module {module!r} not found (looked for "
                            f"{', '.join(str(p.relative_to(root)) for p in candidates)})",
                            hint=f"create it, or fix `{role}:` in fnpack.yaml (form: module:callable)")
    try:
        tree = ast.parse(source_path.read_text(encoding="utf-8"), filename=str(source_path))
    except SyntaxError as exc:
        raise UserCodeError(f"{role} {ref!r}: {source_path.name} line {exc.lineno}: {exc.msg}",
                            hint="fix the syntax error") from None
    if attr not in _top_level_names(tree):
        raise UserCodeError(f"{role} {ref!r}: {source_path.name} defines no top-level {attr!r}",
                            hint=f"define `def {attr}(...)` in {source_path.name} or fix `{role}:`")
    return source_path


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names
