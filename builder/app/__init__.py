"""The team's own app: where its code comes from (source), what never enters the
image (excludes), and the digest of what does (digest)."""
