"""On-instance scripts as shipped: their own modules inlined, one file each.

The scripts in cloudinit/boot/ share code through modules beside them
(`amibake_imds.py`: the IMDS client). In the repository a script imports the
module from its own directory; for an instance the renderer replaces that
`from MODULE import (...)` statement by the module's code (without its module
docstring), so each shipped script is one self-contained file and the shared
code has one home. Only `from MODULE import names` at a script's top level is
inlined, and every name it imports must be defined by the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from builder.errors import UserError


def library_modules(directory: Path) -> dict[str, Path]:
    """The modules scripts in `directory` may import: its `*.py` files, by name."""
    return {p.stem: p for p in sorted(directory.glob("*.py")) if p.is_file()}


def inline_modules(source: str, directory: Path, origin: str) -> str:
    """`source` with each top-level `from <module in directory> import ...` replaced
    by that module's code."""
    modules = library_modules(directory)
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in reversed(tree.body):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0
                and node.module in modules):
            continue
        path = modules[node.module]
        code, defined = _module_code(path)
        missing = [a.name for a in node.names if a.name not in defined]
        if missing or any(a.asname for a in node.names):
            raise UserError(
                f"{origin}:{node.lineno}: imports {', '.join(missing) or 'with `as`'} "
                f"from {path.name}, which cannot be inlined",
                hint=f"import only names {path.name} defines, without `as`",
            )
        end = node.end_lineno or node.lineno
        lines[node.lineno - 1:end] = [
            f"# ---- {path.name}, inlined by amibake ----\n", code,
            f"# ---- end of {path.name} ----\n",
        ]
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Import) and any(a.name in modules for a in sub.names):
            raise UserError(f"{origin}:{sub.lineno}: `import` of a module beside the script",
                            hint="write `from MODULE import (...)` at the top level")
    return "".join(lines)


def _module_code(path: Path) -> tuple[str, set[str]]:
    """The module's code without its docstring, and the names it defines."""
    source = path.read_text()
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    start = 0
    first = tree.body[0] if tree.body else None
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        start = first.end_lineno or first.lineno
    code = "".join(lines[start:]).strip("\n") + "\n"
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
    return code, defined
