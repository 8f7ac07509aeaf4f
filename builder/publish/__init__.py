"""Publishing a stored image: an ordered list of steps with cleanups.

See `steps` for the Step protocol and runner, `context` for the typed
context, `ebs_steps` for the EBS-backed AMI steps, `lifecycle` for
deprecate / prune / gc and `plan` for --dry-run plans.
"""
