"""The `treasure` command (installed with the package): every stage, the pipeline, the search, the server.

    treasure pipeline --config my.yaml [section.key=value ...]     the whole method (= pipelines/full.py)
    treasure normalize --config my.yaml [key=value ...]           one stage; also annotate, train, evaluate
    treasure tune --config tune.yaml [key=value ...]               the dropout search (= tuning/search.py)
    treasure serve checkpoint=PATH [key=value ...]                 = serve run treasure.serving.app:build_app

Each subcommand calls the same library function as the repository's script; `--config` defaults to
the repository's demo config, so outside a checkout pass your own. Ray: RAY_ADDRESS when set, else a
private local cluster on 127.0.0.1.
"""

from __future__ import annotations

import sys

# subcommand -> (module of the stage's config model and run(), config class, config section)
STAGES = {
    "normalize": ("treasure.corpus", "NormalizeConfig", "normalize"),
    "annotate": ("treasure.annotate", "AnnotateConfig", "annotate"),
    "train": ("treasure.train", "TrainConfig", "train"),
    "evaluate": ("treasure.evaluate", "EvaluateConfig", "evaluate"),
}
COMMANDS = ("pipeline", *STAGES, "tune", "serve")


def run_stage(name: str, argv: list[str]) -> int:
    import importlib

    from treasure.stage_script import main

    package, model, section = STAGES[name]
    config = getattr(importlib.import_module(f"{package}.config"), model)
    run = importlib.import_module(f"{package}.stage").run
    main(config, section, run, f"Run the {name} stage: --config FILE plus key=value overrides.", argv,
         prog=f"treasure {name}")
    return 0


def serve(argv: list[str]) -> int:
    """Ray Serve's own `serve run` on the package's application (its options, e.g. --address, pass through)."""
    from ray.serve.scripts import cli

    # click takes options anywhere among the arguments: `treasure serve checkpoint=X --address auto`
    return cli.commands["run"].main(["treasure.serving.app:build_app", *argv], prog_name="treasure serve") or 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"treasure: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "pipeline":
        from treasure.pipeline import main as pipeline_main

        return pipeline_main(rest, prog="treasure pipeline")
    if command == "tune":
        from treasure.tune.command import main as tune_main

        return tune_main(rest, prog="treasure tune")
    if command == "serve":
        return serve(rest)
    return run_stage(command, rest)


if __name__ == "__main__":
    sys.exit(main())
