"""Cutover: move a live app (PostgreSQL, uploaded files, DNS) onto new servers.

`plan` computes the runbook; `steps` are the ordered, idempotent steps that
`state` runs and persists after each one, so a killed run resumes.
"""
