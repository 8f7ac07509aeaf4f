"""`amibake imds serve`: run the local instance metadata service until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from builder.commands import VERBS
from builder.errors import UserError
from builder.imds.config import ImdsConfig
from builder.imds.secrets_file import read_secrets_file, read_secrets_stream
from builder.inputs import read_input
from builder.output import Output
from builder.ssh_keys import read_public_key

#: EC2 caps user-data at 16 KiB (base64 of it at 25 KiB); served raw, so allow slack
USER_DATA_LIMIT = 64 * 1024


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    imds = subparsers.add_parser(
        "imds", parents=[parent], help=VERBS["imds"],
        description="The local EC2 instance metadata service (IMDSv2).",
    )
    verbs = imds.add_subparsers(dest="imds_verb", metavar="VERB", required=True)
    serve = verbs.add_parser(
        "serve", parents=[parent], help="serve instance metadata until Ctrl-C",
        description="Serve one instance's metadata (IMDSv2) until Ctrl-C; prints the URL.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_port, default=0, help="port (default: a free one)")
    serve.add_argument("--role", help="the instance's amibake role (served as tag Role)")
    serve.add_argument("--user-data", type=Path, metavar="FILE", help="user-data to serve")
    serve.add_argument("--tag", action="append", default=[], metavar="K=V",
                       help="an instance tag (repeatable)")
    serve.add_argument("--public-key", action="append", default=[], type=Path, metavar="FILE",
                       help="an OpenSSH public key file (repeatable; the first is key 0)")
    secrets = serve.add_mutually_exclusive_group()
    secrets.add_argument("--secrets-file", type=Path, metavar="FILE",
                         help="secrets the SSM / Secrets Manager API answers: NAME=VALUE "
                              "lines in a file only its owner may read (chmod 600)")
    secrets.add_argument("--secrets-stdin", action="store_true",
                         help="read the NAME=VALUE secret lines from standard input")
    # refused: a secret on the command line is visible in `ps` and shell history
    serve.add_argument("--secret", action="append", default=[], help=argparse.SUPPRESS)
    serve.add_argument("--instance-id", default=ImdsConfig.instance_id)
    serve.add_argument("--ami-id", default=ImdsConfig.ami_id)
    serve.add_argument("--instance-type", default=ImdsConfig.instance_type)
    serve.add_argument("--region", default=ImdsConfig.region)
    serve.add_argument("--iam-role", default=ImdsConfig.iam_role,
                       help="the instance profile's role name ('' for none)")
    serve.add_argument("--optional-token", action="store_true",
                       help="answer IMDSv1 requests too (HttpTokens=optional)")
    serve.set_defaults(func=serve_command)


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit() and int(value) <= 65535):
        raise argparse.ArgumentTypeError(f"not a TCP port (0..65535): {value[:20]!r}")
    return int(value)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise UserError(f"{option} expects KEY=VALUE, got {value!r}",
                            hint=f"e.g. {option} Name=web-1")
        pairs[key] = rest
    return pairs


def _secrets(args: argparse.Namespace) -> dict[str, str]:
    if args.secret:
        raise UserError("--secret is not accepted: a secret on the command line is visible "
                        "to every user in `ps` and stays in shell history",
                        hint="put NAME=VALUE lines in a file (chmod 600) and pass "
                             "--secrets-file FILE, or pipe them in with --secrets-stdin")
    if args.secrets_file:
        return read_secrets_file(args.secrets_file)
    if args.secrets_stdin:
        return read_secrets_stream(sys.stdin.buffer)
    return {}


def config_from_args(args: argparse.Namespace) -> ImdsConfig:
    secrets = _secrets(args)
    tags = _pairs(args.tag, "--tag")
    if args.role:
        tags["Role"] = args.role
    keys = tuple(read_public_key(p) for p in args.public_key)
    user_data = read_input(args.user_data, USER_DATA_LIMIT, "user-data") if args.user_data \
        else b""
    return ImdsConfig(
        instance_id=args.instance_id, ami_id=args.ami_id, instance_type=args.instance_type,
        region=args.region, iam_role=args.iam_role, public_keys=keys, tags=tags,
        user_data=user_data, secrets=secrets,
        require_token=not args.optional_token,
    )


def serve_command(args: argparse.Namespace, out: Output) -> int:
    config = config_from_args(args)
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    from builder.imds.server import ImdsServer

    # SIGINT sets the same event from before the URL is printed (a Ctrl-C
    # right after it is a clean stop too, not a KeyboardInterrupt outside the
    # wait); left alone where the caller ignores it (a background job)
    previous = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_term)
    try:
        try:
            server = ImdsServer(config, host=args.host, port=args.port).start()
        except OSError as exc:
            raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}",
                            hint="pick another --port") from exc
        try:
            out.result(
                {"url": server.url, "instance_id": config.instance_id,
                 "require_token": config.require_token, "tags": config.tags},
                text=f"IMDS for {config.instance_id} at {server.url} (Ctrl-C stops it)",
            )
            stop.wait()
        finally:
            server.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous_int)
    out.say("IMDS stopped")
    return 0
