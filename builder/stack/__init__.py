"""The whole app on AWS: the CloudFormation template of a manifest's `stack:` section."""
