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
    in_store.add_argument("--artifacts-dir", default=config.DEFAULT_ARTIFACTS_DIR, metavar="DIR",
                          help=f"the artifact store: a folder, or s3://bucket/prefix (default: "
                               f"{config.DEFAULT_ARTIFACTS_DIR})")
    in_store.add_argument("--json", action="store_true",
                          help="print JSON (every field, every row) instead of a table")

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
    store_.add_argument("--all", action="store_true", help="every path under the store with every field, in a table as wide as it "
                        "takes, not one line per entry")
    store_.set_defaults(handler=store)

    gc_ = commands.add_parser("gc", parents=[in_store], help="remove the entries no champion and no recent run "
                              "needs, and leftovers; prints what would go unless --yes")
    config.add_options(gc_, config.GcPolicy)
    gc_.add_argument("--older-than", dest="older_than_days", type=float, help=argparse.SUPPRESS)  # its old name
    what = gc_.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print what would go and the space freed (the default)")
    what.add_argument("--yes", action="store_true", help="remove it")
    gc_.set_defaults(handler=gc)

    runs_ = commands.add_parser("runs", parents=[in_store], help="list past runs, oldest first, with their "
                                "main settings, test accuracy and gate verdict, one screen wide")
    runs_.add_argument("--all", action="store_true",
                       help="every setting and figure logged, in a table as wide as it takes")
    runs_.set_defaults(handler=runs)
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
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

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
    # A temporary server ends with the run: no link into its UI, which would be dead by the time it is read.
    shown_urls = {PREFECT_API_URL: server["api_url"], **({PREFECT_UI_URL: ""} if temporary else {})}
    if temporary is not None:
        last_word.append(f"{PROG}: this run was not recorded on a lasting Prefect server (its temporary one ended "
                         "with it); `make serve` keeps every run in the UI, and runs then report there")
    try:
        with temporary_settings(shown_urls):
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
        print(f"{summary['gate']['verdict']}: {summary['gate']['reason']}")


def predict(args: argparse.Namespace) -> int:
    import numpy as np

    from engine import remote
    from engine.champions import ChampionDamaged
    from tasks import predict as prediction

    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    try:
        images = [prediction.prepare(path, invert) for path in args.images]
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if args.model:
            used, model_file = {"path": str(args.model)}, args.model
        else:
            fingerprint, model_file = prediction.champion_model(remote.store_root(args.artifacts_dir), args.dataset)
            used = {"dataset": args.dataset, "fingerprint": fingerprint, "path": str(model_file)}
        model = prediction.load_model(model_file)
    except (prediction.NotAnImage, prediction.ModelUnreadable, ChampionDamaged, FileNotFoundError) as error:
        print(f"{PROG}: error: {shown(str(error))}", file=sys.stderr)
        return EXIT_INVALID
    probabilities = prediction.classify(model, np.stack(images))
    results = [{"image": shown(str(path)), "class": int(p.argmax()),
                "probabilities": [round(float(x), 6) for x in p]}
               for path, p in zip(args.images, probabilities)]
    used = {key: shown(value) for key, value in used.items()}
    if args.json:
        print(json.dumps({"model": used, "predictions": results}))
    else:
        print(f"model: the {used['dataset']} champion {used['fingerprint']} ({used['path']})" if "dataset" in used
              else f"model: {used['path']}")
        for result in results:
            top = result["probabilities"][result["class"]]
            print(f"{result['image']}: {result['class']} ({top:.1%})")
    return 0


# Where a table goes when stdout is not a terminal (a pipe, a file): this many columns.
PIPED_WIDTH = 120


def _width() -> int:
    """The terminal's width, or PIPED_WIDTH when stdout is not one."""
    import shutil

    return shutil.get_terminal_size((PIPED_WIDTH, 24)).columns if sys.stdout.isatty() else PIPED_WIDTH


def _text(cell: Any) -> str:
    """A cell as printed: numbers briefly, nothing as "-", text printable (no control characters)."""
    import numbers

    import pandas as pd

    if isinstance(cell, str):
        return shown(cell) if cell else "-"
    if cell is None or pd.api.types.is_scalar(cell) and pd.isna(cell):
        return "-"
    if pd.api.types.is_bool(cell):
        return "yes" if cell else "no"
    if isinstance(cell, numbers.Integral):
        return str(int(cell))
    if isinstance(cell, numbers.Real):
        return f"{float(cell):.6g}"
    return shown(cell)


# A column this wide or narrower is never cut short to fit the screen; a wider one is, to this width at least.
_KEPT_WIDTH = 16


def _fitted(widths: list[int], room: int) -> list[int]:
    """Column widths that fit in `room`: the widest columns cut first, none below _KEPT_WIDTH while others are
    wider; then, if need be, every column down to one character."""
    widths = list(widths)
    for floor in (_KEPT_WIDTH, 1):
        while sum(widths) > room:
            widest = max(range(len(widths)), key=widths.__getitem__)
            if widths[widest] <= floor:
                break
            widths[widest] -= 1
    return widths


def _grid(frame: Any, wide: bool = False, right: Sequence[str] = ()) -> str:
    """A table as plain text (no colours, no markup): the terminal's width, its widest columns cut short with
    "…" to fit; or, `wide`, as wide as its cells make it. `right`: the columns aligned right (numbers)."""
    import io

    from rich.console import Console
    from rich.table import Table

    rows = [list(map(_text, row)) for row in frame.itertuples(index=False)]
    headers = [str(column) for column in frame.columns]
    width = 100_000 if wide else _width()
    widths = _fitted([max([len(header)] + [len(row[n]) for row in rows]) for n, header in enumerate(headers)],
                     width - 2 * (len(headers) - 1))
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="", collapse_padding=False)
    for header, column, fitted in zip(headers, frame.columns, widths):
        table.add_column(header, justify="right" if column in right else "left", no_wrap=True,
                         overflow="ellipsis", width=fitted)
    for row in rows:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, markup=False, highlight=False, emoji=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def _numbers(frame: Any) -> list[str]:
    import pandas as pd

    return [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and frame[c].dtype != bool]


def _when(finished: Any) -> str:
    """A run's end in local time, to the minute."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(finished).astimezone().strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError):  # not a time, or one local time cannot show (year 9999)
        return "-"


def runs(args: argparse.Namespace) -> int:
    import pandas as pd

    from engine import remote, runlog

    table = runlog.read(remote.store_root(args.artifacts_dir))
    names = [runlog.run_name(run) for _, run in table.iterrows()]
    if args.json:
        print(_table(table, as_json=True))
    elif table.empty:
        print(f"no runs logged in {shown(args.artifacts_dir)}")
    elif args.all:
        listing = table[runlog.COLUMNS].assign(run_name=names)
        print(_grid(listing, wide=True, right=_numbers(listing)))
    else:  # one screen wide: the run, its main settings, its figure and its verdict
        gate = table["gate_passed"].map({True: "promoted", False: "not promoted"})
        if "gate_verdict" in table:  # lines from before the verdict had a name: passed or not
            gate = table["gate_verdict"].map({"already the champion": "already"}).fillna(gate)
        listing = pd.DataFrame({
            "when": table["finished"].map(_when), "run": names,
            "dataset": table["dataset"], "epochs": table["epochs"], "batch": table["batch_size"],
            "lr": table["learning_rate"], "test accuracy": table["test_accuracy"].map(
                lambda x: f"{x:.4f}" if isinstance(x, float) and x == x else None),
            "gate": gate.where(gate.notna(), None)})
        print(_grid(listing, right=["epochs", "batch", "lr", "test accuracy"]))
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
    if args.all:  # each path as the store names it, as wide as it takes
        root = table["path"].iloc[0]
        listing = table.assign(path=[shown(os.path.relpath(path, root)) for path in table["path"]])
        print(_grid(listing, wide=True, right=["bytes", "age_days"]))
    else:
        entries = table[table["kind"] == "entry"]
        print(_grid(_entry_rows(entries, bucket=bool(table["local_only"].any())), right=["size", "age"])
              if len(entries) else f"no entries in {shown(args.artifacts_dir)}")
        others = [_OTHER_KINDS[kind](len(rows)) + f" ({_size(rows['bytes'].sum())})"
                  for kind, rows in table[table["kind"] != "entry"].groupby("kind", sort=False)]
        if others:
            print("besides: " + ", ".join(others))
    total = int(table["bytes"].sum())
    print(f"total: {total} bytes ({total / 1e6:.1f} MB) in {shown(args.artifacts_dir)}")
    return 0


# What `store` sums up beside the entries, by kind (inventory.py): in words, for so many.
_OTHER_KINDS = {
    "run report": lambda n: f"{n} run report{'s' * (n > 1)}",
    "leftover": lambda n: f"{n} leftover{'s' * (n > 1)} gc removes",
    "checkpoint": lambda n: f"{n} checkpoint{'s' * (n > 1)} gc removes",
    "foreign": lambda n: f"{n} {'files' if n > 1 else 'file'} gc never touches",
    "store": lambda n: "the store's own folders and files",
}


def _size(size: Any) -> str:
    from rich.filesize import decimal

    return decimal(int(size))


def _age(days: float) -> str:
    hours = days * 24
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.0f} h" if hours < 48 else f"{days:.0f} d"


def _entry_rows(rows: Any, bucket: bool = False) -> Any:
    """One line per entry of the store: what it is, its size and age, the last run that used it, what keeps it."""
    import pandas as pd

    kept = [", ".join(why for why in (f"champion {row.champion}" if row.champion else "",
                                      "recent run" if row.recent_run else "") if why) or "nothing: gc removes it"
            for row in rows.itertuples()]
    listing = pd.DataFrame({"stage": rows["stage"], "fingerprint": rows["fingerprint"],
                            "size": rows["bytes"].map(_size), "age": rows["age_days"].map(_age),
                            "last run": rows["last_run_name"], "kept by": kept})
    if bucket:  # a store in S3: what this host's copy holds that the bucket lacks
        listing["in the bucket"] = rows["local_only"].map({True: "no", False: "yes"})
    return listing


def gc(args: argparse.Namespace) -> int:
    import pandas as pd

    from engine import inventory

    policy = _gc_policy(args)
    try:
        doomed, summary = _in_store(args, inventory.clean, policy.runs_kept, policy.older_than_days, remove=args.yes)
    except inventory.RunsInProgress as error:
        print(f"{PROG}: error: {error}; try again then", file=sys.stderr)
        return EXIT_FAILED
    if not args.yes:
        if args.json:
            print(_table(doomed.drop(columns=["path"]), as_json=True))
        elif len(doomed):  # one line each: what it is, its size and age, the last run that used it
            listing = pd.DataFrame({"kind": doomed["kind"], "stage": doomed["stage"],
                                    "fingerprint": doomed["fingerprint"], "size": doomed["bytes"].map(_size),
                                    "age": doomed["age_days"].map(_age), "last run": doomed["last_run_name"]})
            print(_grid(listing, right=["size", "age"]))
        else:
            print("nothing to remove")
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
