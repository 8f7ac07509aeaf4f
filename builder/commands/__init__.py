"""One module per CLI verb (or verb group).

Each module defines `register(subparsers, parent)`: it adds its verb with
`subparsers.add_parser(NAME, parents=[parent], help=...)` and sets
`func=handler` where `handler(args, out: Output) -> int`. The CLI finds the
modules here by itself, so adding a verb touches no other file.
"""

#: Every verb and its one-line help, the one place it is written: `amibake --help`
#: lists them without importing any verb's module (the CLI imports only the verb it
#: runs); each module's `register` takes its help from here.
VERBS: dict[str, str] = {
    "amis": "deprecate, prune and clean up published AMIs in AWS",
    "bake": "bake a bootable, boot-tested image from a manifest",
    "bundle": "make an EC2 instance-store bundle",
    "cache": "list or prune the layer cache",
    "cutover": "move the live app (database, files, DNS) onto the new servers",
    "db": "list, verify or restore the database backups in S3 (pgBackRest)",
    "iam-policy": "print the IAM policy amibake needs",
    "images": "list, inspect, verify and prune locally stored images",
    "imds": "the local EC2 instance metadata service",
    "instances": "list or stop local instances",
    "launch": "start an instance of a baked image in a role (local VM or EC2)",
    "publish": "publish a stored image as AMIs",
    "render": "write a role's cloud-init user-data",
    "schema": "print every manifest setting: key, type, default, help",
    "stack": "the whole app on AWS as one CloudFormation stack",
    "unbundle": "verify a bundle and reassemble its image",
    "upload-bundle": "upload a bundle to S3",
    "validate": "check manifests and the user-data they render",
}
