"""Validation of rendered user-data: cloud-init's own schema, then amibake's lints.

Public API:
- `validate_rendered(manifest, rendered) -> list[Problem]`
- `schema_problems(text) -> list[SchemaIssue]` (cloud-init 22.4.2, in-process)
- `lint_user_data(user_data) -> list[LintIssue]`
"""

from builder.validate.check import validate_rendered
from builder.validate.lints import LintIssue, lint_user_data
from builder.validate.schema import SchemaIssue, schema_problems

__all__ = ["LintIssue", "SchemaIssue", "lint_user_data", "schema_problems", "validate_rendered"]
