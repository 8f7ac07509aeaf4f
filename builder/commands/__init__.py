"""One module per CLI verb (or verb group).

Each module defines `register(subparsers, parent)`: it adds its verb with
`subparsers.add_parser(NAME, parents=[parent], help=...)` and sets
`func=handler` where `handler(args, out: Output) -> int`. The CLI finds the
modules here by itself, so adding a verb touches no other file.
"""
