"""The ``digits`` command line: read folders of scans through the service, or locally.

``digits read PATH...`` reads every image the paths name (files, folders searched recursively,
globs, CSV or JSONL manifests) and writes one row per image to ``--out`` (CSV or JSON Lines;
JSON Lines on stdout without it) as soon as it is known, with a progress bar and a summary on
stderr. ``--resume`` reads only what the results file lacks; ``--shard i/N`` one of N parts of
the items, by a stable hash of their ids; ``--local`` reads in this process with the service's
own code and model, no server. Exit status: 0 when every item was read, 1 when some were not
(their rows say why) or the service stayed unavailable, 2 for a usage error (bad options, a
path that does not exist, a refused API key or version).

``digits model`` and ``digits health`` show what the service serves and whether it is ready;
``digits reviews stats`` how many readings wait in its review queue.
"""

from __future__ import annotations

import asyncio
import enum
import os
import sys
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from digits_client.batching import Limits
from digits_client.client import AsyncClient, Client
from digits_client.endpoints import DEFAULT_URL
from digits_client.errors import ApiError, DigitsError
from digits_client.output import Row, RowWriter
from digits_client.retry import Retry
from digits_client.run import (
    STRING_BATCH_FILES,
    Engine,
    Reading,
    RunStoppedError,
    ServerEngine,
    Summary,
    read_items,
)
from digits_client.sources import (
    IMAGE_EXTENSIONS,
    Item,
    UsageError,
    collect,
    in_shard,
    parse_shard,
)

#: The environment variables the command line reads (besides the service's DIGITS_MODELS_DIR
#: and other settings, which --local reads as the service does).
ENV_URL: Final = "DIGITS_URL"
ENV_API_KEY: Final = "DIGITS_API_KEY"
ENVIRONMENT: Final = (ENV_URL, ENV_API_KEY)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

app = typer.Typer(
    name="digits",
    help="Read handwritten digits and digit strings with the MNIST digit reader.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
reviews_app = typer.Typer(
    name="reviews",
    help="The service's review queue: readings flagged for a person to check.",
    no_args_is_help=True,
)
app.add_typer(reviews_app)
stderr = Console(stderr=True)


class NormalizeChoice(enum.StrEnum):
    """``normalize`` of ``POST /predict``."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


UrlOption = Annotated[
    str, typer.Option("--url", envvar=ENV_URL, help="The service's base URL.", show_envvar=True)
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=ENV_API_KEY,
        help="Sent as X-API-Key (when the service sets DIGITS_API_KEY).",
        show_default=False,
    ),
]


class _Rate(ProgressColumn):
    """Images per second so far."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = f"{speed:,.0f} images/s" if speed else "- images/s"
        return Text(shown, style="progress.data.speed")


@app.command()
def read(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively by extension), globs, or CSV/JSONL "
            "manifests with a 'path' (and an optional 'id') per row.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Results file, .csv or .jsonl: one row per item, written as it is known. "
            "Default: JSON Lines on stdout.",
            show_default=False,
        ),
    ] = None,
    recognize: Annotated[
        bool,
        typer.Option("--recognize", help="Read digit strings (POST /recognize/batch), not digits."),
    ] = False,
    expected_length: Annotated[
        int | None,
        typer.Option(
            "--expected-length",
            min=1,
            help="With --recognize: how many digits a string should have; another count is "
            "flagged for review.",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            min=0.0,
            max=1.0,
            help="Flag readings with a digit below this confidence. Default: the served "
            "version's review threshold.",
            show_default=False,
        ),
    ] = None,
    normalize: Annotated[
        NormalizeChoice | None,
        typer.Option(
            "--normalize", help="Single digits: the service's normalize.", show_default=False
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Read in this process with the service's code and model, no server (needs the "
            "service package installed).",
        ),
    ] = False,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir",
            help="With --local: the models directory. Default: DIGITS_MODELS_DIR, else "
            "models/mnist.",
            show_default=False,
        ),
    ] = None,
    model_version: Annotated[
        int | None,
        typer.Option(
            "--model-version",
            min=1,
            help="Read with this model version (one the service serves). Default: its default.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Skip the items --out already holds; append the rest."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start --out over if it exists.")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="i/N: read only shard i (0 to N-1) of N, chosen by a stable hash of each id, "
            "so N runs (on N machines) read every item once.",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Batches in flight at once.")
    ] = 4,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Most files per batch. Default: the service's limit (256) for digits, "
            f"{STRING_BATCH_FILES} for strings; batches are also kept within its byte and "
            "pixel limits.",
            show_default=False,
        ),
    ] = None,
    max_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-bytes",
            min=1024,
            help="The service's DIGITS_MAX_UPLOAD_BYTES, when it is not the default 5 MiB.",
            show_default=False,
        ),
    ] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            "--max-pixels",
            min=1,
            help="The service's DIGITS_MAX_REQUEST_PIXELS, when it is not the default.",
            show_default=False,
        ),
    ] = None,
    extensions: Annotated[
        list[str] | None,
        typer.Option(
            "--ext",
            help="File extensions searched for in folders (repeat it). Default: "
            + " ".join(IMAGE_EXTENSIONS),
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds to wait for one answer.")
    ] = 120.0,
    retries: Annotated[
        int,
        typer.Option("--retries", min=0, help="Retries of a request the service could not take."),
    ] = 4,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")
    ] = True,
) -> None:
    """Read images and write one row per item: id, path, digits, confidence, needs_review,
    reasons, model_version, review_id, error, message."""
    try:
        reading = Reading(
            recognize=recognize,
            expected_length=expected_length,
            threshold=threshold,
            normalize=normalize.value if normalize is not None else None,
            version=model_version,
        )
        if expected_length is not None and not recognize:
            raise UsageError("--expected-length goes with --recognize")
        if normalize is not None and recognize:
            raise UsageError("--normalize is for single digits, not --recognize")
        if resume and overwrite:
            raise UsageError("--resume or --overwrite, not both")
        if resume and out is None:
            raise UsageError("--resume needs --out: the results file to resume")
        shard_of = parse_shard(shard) if shard is not None else None
        items = collect(paths, extensions or IMAGE_EXTENSIONS)
        if shard_of is not None:
            items = in_shard(items, *shard_of)
        writer = RowWriter(out, resume=resume, overwrite=overwrite)
    except UsageError as error:
        _usage_error(str(error))
    pending = [item for item in items if item.id not in writer.done]
    skipped = len(items) - len(pending)
    try:
        if local:
            engine = _local_engine(reading, models_dir)
        else:
            defaults = Limits()
            limits = Limits(
                max_files=defaults.max_files,
                max_bytes=max_bytes or defaults.max_bytes,
                max_request_pixels=max_pixels or defaults.max_request_pixels,
                max_image_pixels=min(defaults.max_image_pixels, max_pixels or sys.maxsize),
            )
            client = AsyncClient(
                url,
                api_key=api_key,
                timeout=timeout,
                retry=Retry(attempts=retries + 1),
                limits=limits,
            )
            engine = ServerEngine(client, reading)
        summary = _run(pending, engine, writer, reading, concurrency, batch_size, progress)
    finally:
        writer.close()
    summary.skipped = skipped
    _print_summary(summary, out)
    if summary.stopped is not None:
        raise typer.Exit(EXIT_USAGE if summary.stopped.usage else EXIT_FAILED)
    raise typer.Exit(EXIT_FAILED if summary.refused else EXIT_OK)


def _usage_error(message: str) -> NoReturn:
    stderr.print(f"[red]Error[/red]: {message}", highlight=False)
    stderr.print("Try 'digits read --help' for help.", highlight=False)
    raise typer.Exit(EXIT_USAGE)


def _local_engine(reading: Reading, models_dir: Path | None) -> Engine:
    """The in-process reader. Imported here, not at the top: it loads the service package and
    TensorFlow, which the client does without unless --local asks for them."""
    # TensorFlow's C++ logging would write its start-up notes over the progress bar.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from digits_client.local import LocalEngine
    except ImportError as error:
        stderr.print(
            f"[red]--local needs the service package (mnist-digits) installed[/red]: {error}. "
            "Install it from the service's repository (`make install`), or read through a "
            "server with --url."
        )
        raise typer.Exit(EXIT_USAGE) from None
    return LocalEngine(reading, models_dir)


def _run(
    items: list[Item],
    engine: Engine,
    writer: RowWriter,
    reading: Reading,
    concurrency: int,
    batch_size: int | None,
    show_progress: bool,
) -> Summary:
    columns: list[ProgressColumn] = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    ]
    bar = Progress(*columns, console=stderr, disable=not show_progress, transient=False)
    task = bar.add_task("reading", total=len(items))

    def write(row: Row) -> None:
        writer.write(row)
        bar.advance(task)

    async def main() -> Summary:
        try:
            if not items:
                return Summary()
            return await read_items(
                items, engine, write, reading, concurrency=concurrency, max_files=batch_size
            )
        except RunStoppedError as error:
            return Summary(stopped=error)
        finally:
            await engine.close()

    with bar:
        try:
            return asyncio.run(main())
        except KeyboardInterrupt:
            bar.stop()
            stderr.print("[yellow]interrupted[/yellow]: every row written so far is kept.")
            raise typer.Exit(130) from None


def _print_summary(summary: Summary, out: Path | None) -> None:
    refused = ", ".join(f"{code} {count:,}" for code, count in summary.refused.most_common())
    line = (
        f"{summary.done:,} items in {summary.seconds:.1f} s ({summary.rate:,.0f} images/s): "
        f"{summary.read:,} read, {summary.flagged:,} flagged for review"
        + (f" ({summary.queued:,} queued)" if summary.queued else "")
        + ", "
        f"{sum(summary.refused.values()):,} refused" + (f" ({refused})" if refused else "")
    )
    if summary.skipped:
        line += f"; {summary.skipped:,} skipped, already in {out}"
    # One line, never folded at the terminal's width: logs and scripts read it whole.
    stderr.print(line, highlight=False, soft_wrap=True)
    if summary.stopped is not None:
        stderr.print(f"[red]stopped[/red]: {summary.stopped.message}", highlight=False)
        if out is not None:
            stderr.print(f"run the same command with --resume to read what {out} lacks")


def _failed(error: DigitsError) -> NoReturn:
    stderr.print(f"[red]{error}[/red]", highlight=False)
    raise typer.Exit(EXIT_USAGE if isinstance(error, ApiError) and error.fatal else 1) from None


@app.command()
def model(url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Show what the service serves (GET /model) as JSON."""
    try:
        with Client(url, api_key=api_key) as client:
            info = client.model()
    except DigitsError as error:
        _failed(error)
    typer.echo(info.model_dump_json(indent=2))


@reviews_app.command("stats")
def review_stats(url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
    """Show the review queue's counts (GET /reviews/stats) as JSON: items by status and kind,
    and how long the oldest waiting one has waited. Needs the reviewers' key as --api-key."""
    try:
        with Client(url, api_key=api_key) as client:
            stats = client.review_stats()
    except DigitsError as error:
        _failed(error)
    typer.echo(stats.model_dump_json(indent=2))


@app.command()
def health(url: UrlOption = DEFAULT_URL) -> None:
    """Say whether the service is up and ready (exit status 0 when ready)."""
    try:
        with Client(url, retry=Retry.never()) as client:
            client.live()
            ready = client.ready()
    except DigitsError as error:
        typer.echo(f"not ready: {error}")
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(f"ready: model version {ready.model_version}")


def main() -> None:
    """The ``digits`` console script."""
    app()
