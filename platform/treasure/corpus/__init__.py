"""The bundled corpus and the normalize stage: sources → one table (id, prompt, response, source, language, metadata).

Modules: `config` (NormalizeConfig), `schema` (columns, ids), `formats` (JSONL/JSON/Parquet parsing),
`sources` (file readers), `chitchat` and `mathematics` (PyPI-packaged sources), `normalize` (pure
checks, dedup, sampling), `stage` (`run`: publish + MLflow). See docs/corpus.md.
"""
