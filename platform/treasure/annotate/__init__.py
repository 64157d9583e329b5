"""Annotation: rules, dataset metadata, language id, an LLM tagger and a quality scorer → markers.

Pure annotators live in their own modules and are tested without Ray; `stage.py` is the Ray Data
shell (shards, errors table, atomic publish) and `pipelines/annotate.py` runs it.
"""
