"""`mnist-pipeline run`: validate the options, run the flow, print the summary."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence, get_args

from pydantic import ValidationError

from flows import config
from flows.config import PipelineConfig
from engine.settings import SettingsError, settings
from engine.text import shown

PROG = "mnist-pipeline"
EXIT_FAILED = 1
EXIT_INVALID = 2

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the message names the bad value.
        self.exit(EXIT_INVALID, f"{PROG}: error: {message}\n")


def _parser(recipe: str = "default") -> argparse.ArgumentParser:
    """The command line; `recipe`'s settings (config.RECIPES) are `run`'s defaults."""
    parser = _Parser(prog=PROG, description="The MNIST CNN tutorial as a cached Prefect pipeline.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, summary, models in (
            ("run", "run the whole pipeline once", ()),
            ("sweep", "train a grid of settings on Dask; the best by validation accuracy goes to the gate",
             (config.SweepGrid, PipelineConfig))):
        flow = commands.add_parser(name, help=summary, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        config.add_options(flow, *models, exclude=config.GRID_FIELDS if models else frozenset())
        flow.add_argument("--json", action="store_true", help="print the run summary as JSON last")
        flow.add_argument("--verbose", action="store_true",
                          help="print the tracebacks of expected failures too (the Prefect UI always has them)")
        if name == "run":
            flow.add_argument("--recipe", choices=sorted(config.RECIPES), default="default",
                              help="tutorial: its settings, with the test split as validation (the options "
                                   "given stand over them)")
            flow.set_defaults(**config.RECIPES[recipe])
        flow.set_defaults(handler=lambda args: run(validate(args), args.json, args.verbose, args.command == "sweep"))
    # The options of the commands that read the store.
    in_store = argparse.ArgumentParser(add_help=False)
    in_store.add_argument("--artifacts-dir", default=config.DEFAULT_ARTIFACTS_DIR)
    in_store.add_argument("--json", action="store_true")

    predict_ = commands.add_parser("predict", parents=[in_store], help="classify PNG or JPEG images")
    predict_.add_argument("images", nargs="+", type=Path)
    predict_.add_argument("--model", type=Path, help="a .keras model; default: the dataset's champion")
    predict_.add_argument("--dataset", default=config.DataSource.model_fields["dataset"].default,
                          choices=get_args(config.DatasetName))
    predict_.add_argument("--invert", choices=["auto", "yes", "no"], default="auto",
                          help="dark ink on light paper needs inverting; auto looks at the border")
    predict_.set_defaults(handler=predict)

    store_ = commands.add_parser("store", parents=[in_store], help="what the artifact store holds: entries by "
                                 "stage, sizes, ages, last runs, champions")
    config.add_options(store_, config.GcPolicy, exclude=frozenset({"older_than_days"}))
    store_.add_argument("--all", action="store_true", help="list every path, not the totals per stage and kind")
    store_.set_defaults(handler=store)

    gc_ = commands.add_parser("gc", parents=[in_store], help="remove the entries no champion and no recent run "
                              "needs, and leftovers; prints what would go unless --yes")
    config.add_options(gc_, config.GcPolicy)
    gc_.add_argument("--older-than", dest="older_than_days", type=float, help=argparse.SUPPRESS)  # its old name
    what = gc_.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print what would go and the space freed (the default)")
    what.add_argument("--yes", action="store_true", help="remove it")
    gc_.set_defaults(handler=gc)

    commands.add_parser("runs", parents=[in_store], help="list past runs with their metrics and gate results"
                        ).set_defaults(handler=runs)
    return parser


def _recipe(argv: Optional[Sequence[str]]) -> str:
    """The recipe `argv` names, read ahead: its settings are the defaults the options (and --help) start from."""
    ahead = _Parser(prog=PROG, add_help=False)  # its one error: --recipe without a value
    ahead.add_argument("--recipe")
    named = ahead.parse_known_args(argv)[0].recipe
    return named if named in config.RECIPES else "default"  # the parser itself refuses an unknown one


def validate(args: argparse.Namespace) -> dict[str, Any]:
    """The flow's parameters from the options, checked before Prefect is imported."""
    fields = {k: v for k, v in vars(args).items() if k in PipelineConfig.model_fields}
    try:
        if args.command == "sweep":
            grid = config.SweepGrid(**{k: v for k, v in vars(args).items() if k in config.SweepGrid.model_fields})
            grid.configs(**fields)
            return {**grid.model_dump(), **fields}
        return PipelineConfig(**fields).model_dump()
    except ValidationError as error:
        _fail(config.describe(error, as_option=True), EXIT_INVALID)


class _WithoutExpectedTracebacks(logging.Formatter):
    """The terminal's log format, less the tracebacks of the project's own errors (the UI's logs keep them)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        from flows.runner import is_expected

        if record.exc_info and is_expected(record.exc_info[1]):
            # A copy: the other handlers (the API's) still send the traceback.
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(record)


def _quiet_terminal() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for handler in {h for logger in loggers for h in getattr(logger, "handlers", [])}:
        if isinstance(handler, PrefectConsoleHandler) and handler.formatter is not None:
            handler.setFormatter(_WithoutExpectedTracebacks(handler.formatter))


def _prefect_at_home() -> None:
    """For every command, before Prefect is imported: its home beside the project, no analytics, no telemetry."""
    os.environ.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _environment() -> None:
    """The settings a command-line run starts with, unless the caller's environment sets them."""
    _prefect_at_home()
    # TensorFlow's start-up notices (oneDNN, CPU features) hide the progress lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # A heartbeat as often as the worker's runs send theirs (scripts/serve.sh): `make serve`'s
    # zombie automation marks Crashed any run silent for 90 s, and Prefect's default is 180 s.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")


def run(parameters: dict[str, Any], as_json: bool, verbose: bool = False, sweep: bool = False) -> int:
    _environment()
    # Printed at exit, after the temporary Prefect server logs its shutdown: registered
    # before that server starts, as exit handlers run last-in, first-out.
    last_word: list[str] = []
    atexit.register(lambda: last_word and print(*last_word, file=sys.stderr, flush=True))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ops import temporary_server as servers

    # The server the run reports to: the one configured, else the one `make serve`
    # started, else a temporary one of the run's own, started while the flow's modules import.
    api_url = PREFECT_API_URL.value() or servers.served_api_url()
    temporary = None if api_url else servers.TemporaryServer()
    if sweep:
        from flows.sweep import mnist_sweep as flow
    else:
        from flows.pipeline import mnist_pipeline as flow
    from flows.runner import StageFailed
    from engine.retries import INTERRUPTED, interrupt

    if not verbose:
        _quiet_terminal()
    if temporary is not None:
        try:
            temporary.wait_until_healthy()
        except servers.ServerError as error:
            last_word.append(f"{PROG}: error: {shown(error)}")
            return EXIT_FAILED
    server = {"api_url": api_url or temporary.api_url, "temporary": temporary is not None}
    # A Ctrl-C stays one, whatever error it surfaces as (engine/retries.py); where
    # SIGINT is ignored (a background job) or handled by the caller, it is left so.
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    INTERRUPTED.clear()  # an earlier run's, in a process that calls this again
    if ours:
        signal.signal(signal.SIGINT, interrupt)
    try:
        with temporary_settings({PREFECT_API_URL: server["api_url"]}):
            state = flow(**parameters, return_state=True)
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt  # it ended the run, as whatever error it was turned into
    outcome: Any = state.result(raise_on_failure=False)
    if state.is_completed():
        _emit({**outcome, "server": server}, as_json)
        return 0
    if isinstance(outcome, StageFailed):
        _emit({**outcome.summary, "server": server}, as_json)
        reason = str(outcome)
    else:
        # Failed outside any stage (an unwritable store, say): its first line is the sentence.
        reason = f"flow {state.name.lower()}: " + (str(outcome).strip().splitlines() or [type(outcome).__name__])[0]
    last_word.append(f"{PROG}: error: {shown(reason)}")
    return EXIT_FAILED


def _emit(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary), flush=True)
    elif "metrics" in summary:
        print(f"test accuracy {summary['metrics']['test_accuracy']:.4f}; report: {shown(summary['report'])}")
        print(("promoted to champion: " if summary["gate"]["passed"] else "not promoted: ") + summary["gate"]["reason"])


def predict(args: argparse.Namespace) -> int:
    import numpy as np

    from engine import remote
    from engine.champions import ChampionDamaged
    from tasks import predict as prediction

    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    try:
        images = [prediction.prepare(path, invert) for path in args.images]
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        model = prediction.load_model(args.model or prediction.champion_model(
            remote.store_root(args.artifacts_dir), args.dataset))
    except (prediction.NotAnImage, prediction.ModelUnreadable, ChampionDamaged, FileNotFoundError) as error:
        print(f"{PROG}: error: {shown(str(error))}", file=sys.stderr)
        return EXIT_INVALID
    probabilities = prediction.classify(model, np.stack(images))
    results = [{"image": shown(str(path)), "class": int(p.argmax()),
                "probabilities": [round(float(x), 6) for x in p]}
               for path, p in zip(args.images, probabilities)]
    if args.json:
        print(json.dumps(results))
    else:
        for result in results:
            top = result["probabilities"][result["class"]]
            print(f"{result['image']}: {result['class']} ({top:.1%})")
    return 0


def runs(args: argparse.Namespace) -> int:
    from engine import remote, runlog

    table = runlog.read(remote.store_root(args.artifacts_dir))
    if table.empty and not args.json:
        print(f"no runs logged in {shown(args.artifacts_dir)}")
    else:
        print(_table(table if args.json else table[runlog.COLUMNS], args.json))
    return 0


def _in_store(args: argparse.Namespace, inspect: Any, *more: Any, **options: Any) -> Any:
    """`inspect(root, ...)` on the store of `--artifacts-dir`; what stops it is one line, exit 2 or 1."""
    from engine import inventory, remote
    from engine.store import StoreError
    from tasks import refs  # noqa: F401  the stages' entries, which gc looks after

    try:
        return inspect(Path(remote.store_root(args.artifacts_dir)), *more, **options)
    except inventory.NotAStore as error:
        _fail(error, EXIT_INVALID)
    except (inventory.CannotJudge, StoreError, OSError) as error:
        _fail(error, EXIT_FAILED)


def _fail(error: object, status: int) -> NoReturn:
    print(f"{PROG}: error: {shown(error)}", file=sys.stderr)
    raise SystemExit(status)


def _gc_policy(args: argparse.Namespace) -> config.GcPolicy:
    try:
        return config.GcPolicy(**{k: v for k, v in vars(args).items() if k in config.GcPolicy.model_fields})
    except ValidationError as error:
        _fail(config.describe(error, as_option=True), EXIT_INVALID)


def _table(table: Any, as_json: bool) -> str:
    """A table as JSON records or as text, every cell printable (no control characters, no undecodable bytes)."""
    printable = table.map(lambda cell: shown(cell) if isinstance(cell, (str, Path)) else cell)
    return printable.to_json(orient="records") if as_json else printable.to_string(index=False)


def store(args: argparse.Namespace) -> int:
    from engine import inventory

    keep_runs = _gc_policy(args).runs_kept

    def listed(root: Path) -> Any:
        try:
            return inventory.inventory(root, keep_runs=keep_runs)
        except inventory.CannotJudge as error:  # listed all the same, without what the champions keep
            print(f"{PROG}: warning: {shown(error)}", file=sys.stderr)
            return inventory.inventory(root, keep_runs=keep_runs, judged=False)

    table = _in_store(args, listed)
    if args.json:
        print(_table(table, as_json=True))
        return 0
    if args.all:  # each path as the store names it
        root = table["path"].iloc[0]
        listing = table.assign(path=[shown(os.path.relpath(path, root)) for path in table["path"]])
    else:
        listing = table.groupby(["kind", "stage"], sort=False).agg(
            count=("bytes", "size"), bytes=("bytes", "sum"), oldest_days=("age_days", "max"),
            kept_by_champion=("champion", lambda c: int((c != "").sum())),
            kept_by_recent_run=("recent_run", "sum"), local_only=("local_only", "sum")).reset_index()
    print(_table(listing, as_json=False))
    total = int(table["bytes"].sum())
    print(f"total: {total} bytes ({total / 1e6:.1f} MB) in {shown(args.artifacts_dir)}")
    return 0


def gc(args: argparse.Namespace) -> int:
    from engine import inventory

    policy = _gc_policy(args)
    try:
        doomed, summary = _in_store(args, inventory.clean, policy.runs_kept, policy.older_than_days, remove=args.yes)
    except inventory.RunsInProgress as error:
        print(f"{PROG}: error: {error}; try again then", file=sys.stderr)
        return EXIT_FAILED
    if not args.yes:
        listing = doomed.drop(columns=["path"])
        print(_table(listing, args.json) if args.json or len(doomed) else "nothing to remove")
        print(f"would free {int(doomed['bytes'].sum())} bytes ({doomed['bytes'].sum() / 1e6:.1f} MB); "
              "run again with --yes to remove it", file=sys.stderr)
        return 0
    for line in summary["skipped_paths"]:
        print(f"skipped {shown(line)}", file=sys.stderr)
    freed = summary["freed_bytes"]
    print(json.dumps({key: summary[key] for key in ("removed", "skipped", "freed_bytes")}) if args.json else
          f"removed {summary['removed']}, skipped {summary['skipped']}, freed {freed} bytes ({freed / 1e6:.1f} MB)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    _prefect_at_home()  # predict imports Prefect too (the champion's lock)
    try:
        settings()  # a bad MNIST_PIPELINE_* variable: one line, before anything else
    except SettingsError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_INVALID
    args = _parser(_recipe(argv)).parse_args(argv)
    try:
        status = args.handler(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (`runs | head -3`): what it read is all it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
