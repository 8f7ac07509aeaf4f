"""On-instance Python scripts as shipped: without their docstrings.

EC2 caps user-data at 16 KiB (after gzip), and a fried all-in-one instance
carries every on-instance script in it. The scripts' documentation stays in
the repository (cloudinit/boot/); what an instance gets keeps the module
docstring's first paragraph (its `--help` text) and drops the rest of the
module docstring and every function and class docstring, and every line
that holds nothing but a comment (the shebang stays). Only whole lines that
hold nothing but a docstring or a comment are removed, so the code is
unchanged: a test compares the two syntax trees without docstrings.
"""

from __future__ import annotations

import ast
import io
import tokenize

_DocNode = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def is_python_script(content: bytes) -> bool:
    first = content.split(b"\n", 1)[0]
    return first.startswith(b"#!") and b"python" in first


def strip_docstrings(source: str, origin: str) -> str:
    """`source` without docstrings, but the module docstring's first paragraph."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    drop: set[int] = set()  # 0-based line numbers
    replace: dict[int, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, _DocNode) or not node.body:
            continue
        first = node.body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            continue
        start, end = first.lineno - 1, (first.end_lineno or first.lineno) - 1
        if lines[start].lstrip()[:1] not in "\"'" or not lines[end].rstrip().endswith(
                ('"', "'")):
            continue  # the string shares a line with code: keep it
        if isinstance(node, ast.Module):
            summary = first.value.value.strip().split("\n\n")[0]
            replace[start] = (f'"""{summary}\n\nShipped without docstrings; the documented '
                              f'source is {origin} in amibake.\n"""\n')
            drop.update(range(start + 1, end + 1))
        elif len(node.body) > 1:
            drop.update(range(start, end + 1))
    drop.update(_comment_lines(source))
    out = [replace.get(i, line) for i, line in enumerate(lines) if i not in drop]
    return "".join(out)


def _comment_lines(source: str) -> set[int]:
    """0-based numbers of the lines that hold only a comment (not the first line: the
    shebang). Found by the tokenizer, so a '#' inside a string is never one."""
    found: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] > 1 \
                and not tok.line[:tok.start[1]].strip():
            found.add(tok.start[0] - 1)
    return found
