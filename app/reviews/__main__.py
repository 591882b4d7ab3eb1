"""``python -m app.reviews upgrade [URL]``: apply the review queue's migrations and exit.

The service applies them itself at start (``DIGITS_REVIEW_MIGRATE=true``, the default); with
that off, an operator runs this once per release, e.g. as a Kubernetes Job before the rollout.
Without a URL it uses the service's own setting (``DIGITS_REVIEW_DATABASE_URL``, else the
SQLite file in ``DIGITS_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.reviews.db import open_database, redacted, upgrade
from app.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m app.reviews", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upgrade", help="apply every migration the database lacks")
    up.add_argument("url", nargs="?", help="database URL (default: the service's setting)")
    args = parser.parse_args(argv)
    url = args.url or Settings().review_database()
    database = open_database(url)
    try:
        revision = upgrade(database)
    finally:
        database.dispose()
    print(f"{redacted(url)}: at revision {revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
