"""Normalize the corpus: every configured source → one Parquet table + manifest (docs/corpus.md).

Run:  .venv/bin/python pipelines/normalize.py --config pipelines/configs/demo.yaml [key=value ...]
      e.g. sources.chitchat.max_rows=500 output=s3://bucket/normalized force=true
"""

if __name__ == "__main__":
    from treasure.corpus.config import NormalizeConfig
    from treasure.corpus.stage import run
    from treasure.stage_script import main

    main(NormalizeConfig, "normalize", run, __doc__)
