"""Where the db role's data lives when it is not the instance store (`storage: ebs`).

`volume.py`: what names the persistent volume (its tags), its size and type,
one home for the stack template, `launch --target aws` and the instance
profile's policy. The boot step that attaches and mounts it is rendered by
builder/render/ebs_storage.py (cloudinit/boot/amibake-ebs-attach, unit
amibake-ebs-attach.service).
"""
