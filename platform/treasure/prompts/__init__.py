"""Versioned prompt files (data, not code): `tagger_<version>.yaml` for the LLM tagger."""
