"""Serving: the α-UMi role models behind an agent API and an OpenAI-compatible chat API (BentoML). See docs/serving.md.

Importing this package is light; `umi.serve.service` (the BentoML service) reads its settings from the environment when
imported."""
