"""Annotate the normalized corpus with markers (rules, metadata, language id, LLM tagger, quality).

Run:  .venv/bin/python pipelines/annotate.py --config pipelines/configs/demo.yaml [annotate.key=value ...]
Overrides are relative to the `annotate:` section, e.g. `tagger.max_rows=0 force=true`.
Ray: RAY_ADDRESS when set (a cluster), else a local cluster pinned to 127.0.0.1.
"""

if __name__ == "__main__":
    from treasure.annotate.config import AnnotateConfig
    from treasure.annotate.stage import run
    from treasure.stage_script import main

    main(AnnotateConfig, "annotate", run, __doc__)
