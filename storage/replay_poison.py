"""``python -m storage.replay_poison [--dry-run]``: put poisoned relay jobs back on the relay queue.

Run it after fixing what made them fail (a setting, a Dataverse outage, a missing channel
instance). Uses AzureWebJobsStorage, or the identity-based AzureWebJobsStorage__* settings, from the
environment (or local.settings.json's Values). Each job gets a fresh attempt count; already relayed
events are still recognised and not relayed twice.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from pathlib import Path

from azure.storage.queue import QueueClient
from pydantic import ValidationError

from core.settings import AppSettings, ConfigurationError, StorageLocation, load
from storage.clients import StorageAccess
from storage.relay_queue import POISON_QUEUE, RELAY_QUEUE, decode_job


def replay(location: StorageLocation | str, *, dry_run: bool = False, limit: int = 10_000) -> tuple[int, int]:
    """Return (replayed, left in the poison queue because unreadable). ``location``: where the queues
    are (a plain string is a connection string)."""
    access = StorageAccess(location)
    try:
        with access.queue(POISON_QUEUE) as poison, access.queue(RELAY_QUEUE) as queue:
            return _replay(poison, queue, dry_run=dry_run, limit=limit)
    finally:
        access.close()


def _replay(poison: QueueClient, queue: QueueClient, *, dry_run: bool, limit: int) -> tuple[int, int]:
    replayed = unreadable = 0
    for message in poison.receive_messages(messages_per_page=32, visibility_timeout=300, max_messages=limit):
        try:
            job = decode_job(base64.b64decode(message.content))
        except (ValidationError, ValueError):
            unreadable += 1
            continue
        if not dry_run:
            fresh = job.model_copy(update={"attempt": 0, "last_error": None})
            queue.send_message(fresh.encode(), time_to_live=-1)
            poison.delete_message(message)
        print(
            f"{'would replay' if dry_run else 'replayed'} {job.kind} {job.provider} "
            f"MessageId={job.message_id} (last error: {job.last_error or 'none'})"
        )
        replayed += 1
    return replayed, unreadable


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m storage.replay_poison", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    args = parser.parse_args()
    settings_file = Path("local.settings.json")
    if settings_file.exists():
        for name, value in json.loads(settings_file.read_text(encoding="utf-8")).get("Values", {}).items():
            os.environ.setdefault(name, str(value))
    try:
        location = load(AppSettings).storage_location()
    except ConfigurationError as exc:
        raise SystemExit(f"cannot replay: {exc}") from None
    replayed, unreadable = replay(location, dry_run=args.dry_run)
    print(
        f"{replayed} job(s) {'to replay' if args.dry_run else 'replayed'}; {unreadable} unreadable left in "
        f"{POISON_QUEUE}"
    )


if __name__ == "__main__":
    main()
