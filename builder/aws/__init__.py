"""AWS access for amibake: clients, the EBS direct uploader, launch, IAM policy.

Clients are always passed in as parameters (see `clients.Clients`); nothing
here creates a client behind the caller's back.
"""
