"""Publishing a stored image: an ordered list of steps with cleanups.

`run` is the run (the steps in order, for either backing); one file per
step (`step_prevalidate`, `step_snapshot` with `snapshot_upload` and
`upload_journal`, `step_bundle`, `step_bundle_upload` with `bundle_upload`,
`step_register`, `step_tag`, `step_copy`, `step_ssm`, `step_finalize`);
`steps` runs them with builder/steps.py's runner over the typed `context`;
`images` holds the AMI and snapshot helpers; `lifecycle` is `amibake amis
deprecate|prune|gc`, whose `actions` --dry-run prints.
"""
