"""The EC2 instance-store bundle format (manifest version 2007-10-10), natively.

bundle: image → tar → gzip (parallel members) → AES-128-CBC → 10 MiB parts +
`<prefix>.manifest.xml` (writer.py, manifest_xml.py); unbundle and verify
(reader.py); the running system as an image (volume.py); certificates
(certs.py). Talking to AWS is builder/publish's: the upload to S3
(publish/bundle_upload.py) and the instance-store publish steps.
"""
