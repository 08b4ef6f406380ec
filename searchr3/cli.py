"""The ``searchr3`` command line: the commands (one module each in :mod:`searchr3.commands`) and
:func:`main`, the one place where errors become exit codes. Heavy imports live inside the commands,
so ``--help`` is instant."""

from __future__ import annotations

import os
import sys

import typer

from searchr3.commands import eval as eval_cmd
from searchr3.commands import index as index_cmd
from searchr3.commands import pipeline as pipeline_cmd
from searchr3.commands import rl as rl_cmd
from searchr3.commands import search as search_cmd
from searchr3.commands import serve as serve_cmd
from searchr3.commands import sft as sft_cmd

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time

app = typer.Typer(
    help="Search-R3: a chat LLM as a search embedder whose embeddings come out of its own reasoning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train the embedder: stage 1 (sft) and stage 2 (rl).", no_args_is_help=True)
index_app = typer.Typer(help="Build and extend persistent search indexes.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(index_app, name="index")
app.command("eval")(eval_cmd.eval_command)
app.command("pipeline")(pipeline_cmd.pipeline)
app.command("search")(search_cmd.search)
app.command("serve")(serve_cmd.serve)
train_app.command("sft")(sft_cmd.sft)
train_app.command("rl")(rl_cmd.rl)
index_app.command("build")(index_cmd.build)
index_app.command("add")(index_cmd.add)

# Known bad input: (module, class). A class is looked up only if its module was imported (an error of
# a module never imported cannot have been raised), so the error path never pays for importing torch.
BAD_INPUT = (
    ("searchr3.commands", "UsageError"),
    ("searchr3.data.beir", "DataError"),
    ("searchr3.backbone", "ModelLoadError"),
    ("searchr3.index", "IndexFormatError"),
    ("searchr3.index", "CorpusError"),
    ("searchr3.runs", "RunError"),
)


def _bad_input_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [FileNotFoundError, NotADirectoryError]
    for module, name in BAD_INPUT:
        if module in sys.modules:
            types.append(getattr(sys.modules[module], name))
    return tuple(types)


def _fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exit codes: 0 success; 2 a usage error (missing or unknown option or command, a bad
    value) or known bad input (:data:`BAD_INPUT`), each reported as one ``error:`` line on stderr; 1
    interrupted; anything else is a bug and keeps its traceback."""
    from typer._click import exceptions as click_exc  # typer's own click: its exceptions are not click's

    try:
        code = app(args=argv, prog_name="searchr3", standalone_mode=False)  # returns a typer.Exit's code
    except click_exc.NoArgsIsHelpError as exc:  # `searchr3`, `searchr3 train`: the help is the answer
        print(exc.ctx.get_help() if exc.ctx else exc.format_message())
        raise SystemExit(0) from None
    except click_exc.ClickException as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) is not None else ""
        _fail(exc.format_message() + hint)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:
        if isinstance(exc, _bad_input_types()):
            _fail(str(exc))
        raise
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
