"""`isco`: the command line of the ISCO-08 coder. Each service contributes its own typer app.

Mounting a new sub-app is one line in `SUB_APPS`: (module, typer app attribute, command name). A name of None
merges the app's commands at the top level (`isco train`, `isco predict`); a name mounts a group
(`isco keys create`). A module that does not exist yet is skipped, so helpers can land independently; an
import error inside an existing module is not hidden. Nothing heavy (torch) is imported to build the app.
"""

from __future__ import annotations

import importlib
import logging

import typer

SUB_APPS: list[tuple[str, str, str | None]] = [
    ("services.trainer.cli", "app", None),  # train, evaluate, data info, models ..., db upgrade
    ("services.inference.cli", "app", None),  # predict
    ("services.gateway.cli", "app", "keys"),  # keys create|list|revoke
    ("services.gateway.jobs_cli", "app", "jobs"),  # jobs submit|get|...
    ("services.gateway.review.cli", "app", "review"),  # review export|retrain
]


def _configure_logging() -> None:
    from rich.logging import RichHandler

    from shared.settings import CommonSettings

    level = getattr(logging, str(CommonSettings().log_level).upper(), logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )
    # Library chatter (HTTP, tokenizers) only at WARNING unless asked for DEBUG.
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "sentence_transformers", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def build_app() -> typer.Typer:
    """The root `isco` app with every available sub-app mounted."""
    root = typer.Typer(
        name="isco",
        help="ISCO-08 occupation coding: train, evaluate, predict, manage models.",
        no_args_is_help=True,
        add_completion=False,
    )

    @root.callback()
    def _root() -> None:
        _configure_logging()

    for module_name, attribute, name in SUB_APPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that sub-app has not landed (or is not installed): skip it
                continue
            raise
        sub_app = getattr(module, attribute)
        if name is None:
            root.add_typer(sub_app)
        else:
            root.add_typer(sub_app, name=name)
    return root


def main() -> None:
    """Console-script entry point (`isco`)."""
    build_app()()


if __name__ == "__main__":  # pragma: no cover
    main()
