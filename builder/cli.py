"""The `amibake` command line: verbs, --json, --debug, one-line errors."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import sys
from collections.abc import Collection, Sequence

from builder import __version__
from builder.commands import VERBS
from builder.errors import EXIT_PROBLEMS, UserError
from builder.output import Output


def _common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS,
        help="print machine-readable JSON instead of text",
    )
    parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="log every command run and show tracebacks",
    )
    return parent


def build_parser(verbs: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every verb; with `verbs`, only those verbs' modules are imported
    and the others are listed by their help (builder.commands.VERBS) alone."""
    parent = _common_options()
    parser = argparse.ArgumentParser(
        prog="amibake",
        description="Bake, test and publish machine images from YAML manifests.",
        parents=[parent],
    )
    parser.add_argument("--version", action="version", version=f"amibake {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, help_text in VERBS.items():
        if verbs is None or name in verbs:
            module = importlib.import_module(f"builder.commands.{name.replace('-', '_')}")
            module.register(sub, parent)
        else:
            sub.add_parser(name, help=help_text, add_help=False)  # listed, never parsed
    return parser


def _verb_of(words: Sequence[str]) -> str | None:
    """The verb argparse will take: the first word that is not an option (amibake's
    own options take no value); None when there is none (usage error or --help)."""
    return next((word for word in words if not word.startswith("-")), None)


#: The collector's young-generation threshold while amibake runs. Start-up (imports,
#: the manifest model's classes, compiled templates) allocates ~10^5 objects that all
#: live to the end, and at CPython's default of 700 the collector rescans them
#: dozens of times: ~15 % of a warm `validate`. Cycles are still collected.
GC_THRESHOLD = (20_000, 50, 100)


def main(argv: Sequence[str] | None = None) -> int:
    gc.set_threshold(*GC_THRESHOLD)
    words = sys.argv[1:] if argv is None else list(argv)
    verb = _verb_of(words)
    try:  # only the verb that runs is imported: `validate` never loads the publisher
        args = build_parser({verb} if verb else set()).parse_args(words)
        if not hasattr(args, "func"):  # a verb _verb_of did not foresee: parse it fully
            args = build_parser().parse_args(words)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    json_mode = bool(getattr(args, "json", False))
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    out = Output(json_mode=json_mode)
    try:
        return int(args.func(args, out))
    except UserError as err:
        if debug:
            raise
        _report(err, out)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        print("amibake: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `amibake ... | head`: the reader has gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return EXIT_PROBLEMS
    except Exception as exc:  # re-raised below unless one_line knows it
        said = one_line(exc)
        if debug or said is None:
            raise
        _report(said, out)
        return EXIT_PROBLEMS


def one_line(exc: BaseException) -> UserError | None:
    """What the CLI says instead of a traceback for errors of the machine and
    its input (files, memory, AWS); None for anything else (a bug: traceback)."""
    hint = "run with --debug to see where it happened"
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc) or type(exc).__name__
        where = f"{_printable(exc.filename)}: " if exc.filename is not None else ""
        return UserError(f"{where}{what}", hint=hint)
    if isinstance(exc, MemoryError):
        return UserError("out of memory", hint="is an input far larger than expected?")
    if isinstance(exc, UnicodeError):
        return UserError(f"text that is not valid UTF-8 or ASCII: {_short(exc)}", hint=hint)
    if isinstance(exc, ValueError):
        return UserError(f"invalid value: {_short(exc)}", hint=hint)
    if "botocore" in sys.modules:  # an AWS error can only come from a loaded botocore
        import botocore.exceptions as bx

        if isinstance(exc, bx.NoCredentialsError):
            return UserError("no AWS credentials found",
                             hint="set AWS_PROFILE or --profile, or run where an instance "
                                  "role provides them")
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "?"), error.get("Message", "")
            op = exc.operation_name
            return UserError(f"AWS {op}: {code}: {_short(message)}",
                             hint="check the credentials' permissions (`amibake iam-policy`) "
                                  "and the region")
        if isinstance(exc, bx.BotoCoreError):
            return UserError(f"AWS: {_short(exc)}", hint="check the endpoint and the network")
    return None


def _printable(value: object) -> str:
    text = str(value)  # a file name may hold a newline: it must not forge a second line
    return text if text.isprintable() else repr(text)


def _short(value: object) -> str:
    text = " ".join(str(value).split())  # one line, whatever the message held
    return text if len(text) <= 300 else text[:297] + "..."


def _report(err: UserError, out: Output) -> None:
    if out.json_mode:
        doc = {
            "ok": False,
            "error": err.message,
            "hint": err.hint,
            "problems": [
                {"file": p.location.file, "line": p.location.line,
                 "col": p.location.col, "message": p.message}
                for p in err.problems
            ],
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    for problem in err.problems:
        print(problem, file=sys.stderr)
    line = f"amibake: error: {err.message}"
    if err.hint:
        line += f" (hint: {err.hint})"
    print(line, file=sys.stderr)
