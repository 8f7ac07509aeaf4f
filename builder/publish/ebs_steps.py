"""The publish steps, for builder/bundle/register.py until it moves into this package."""

from builder.publish.run import ebs_steps, publish
from builder.publish.step_copy import CopyToRegionsStep
from builder.publish.step_finalize import FinalizeStep
from builder.publish.step_prevalidate import PrevalidateStep
from builder.publish.step_register import RegisterImageStep, register_request
from builder.publish.step_snapshot import UploadSnapshotStep
from builder.publish.step_ssm import SsmParametersStep
from builder.publish.step_tag import TagImageStep

__all__ = ["CopyToRegionsStep", "FinalizeStep", "PrevalidateStep", "RegisterImageStep",
           "SsmParametersStep", "TagImageStep", "UploadSnapshotStep", "ebs_steps", "publish",
           "register_request"]
