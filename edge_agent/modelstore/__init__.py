"""Model versions on a node: the content-addressed store, manifest signatures, and candidate checks.

`store` keeps ONNX files and their signed manifests by sha256 and records which is active;
`signing` makes and checks the Ed25519 signatures; `validation` decides whether a candidate may
replace the active model. None of it knows the hot path: the daemon's model manager loads what
the store hands it.
"""
