"""JSON records the workflow writes and reads back (a task's clean metric, a pick record, a
trained model's training record), kept as the Zarr stores are: written atomically, each holding
the SHA-256 of its canonical content and the place it was written (integrity.store_place), both
checked on every read, so that an edited, truncated or copied record stops its reader in one line
naming the file and the fix instead of reaching a figure title or a caption.

Light on purpose (standard library only, the store writer imported when writing): the Snakefile
reads records while it builds the DAG (rules/common.smk: captions and picked heads)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfrepair.stages.integrity import canonical_digest, first_line, place_problem, store_place

__all__ = [
    "RECORD",
    "DamagedRecord",
    "json_text",
    "read_json",
    "read_record",
    "record_for",
    "record_problem",
    "write_json",
]

# The key of the record inside the file: {"sha256": digest of the content without this key,
# "place": where it was written}. An extra key, so that other readers of the file (transformers
# for a checkpoint's training.json) keep reading the keys they know.
RECORD = "selfrepair_record"


class DamagedRecord(ValueError):
    """A JSON record that is not what write_json wrote there: one line naming the file and fix."""


def json_text(content: dict[str, Any], at: str | os.PathLike, indent: int = 1) -> str:
    """The text of a JSON record of `content` written at path `at`: content, plus its digest
    and place under RECORD.

    Args:
        content: the record's keys (JSON values; RECORD is reserved).
        at: the path the file will have once in place (its place is recorded).
        indent: JSON indentation.
    """
    if RECORD in content:
        raise ValueError(f"{RECORD} is the record's own key, not content")
    content = json.loads(json.dumps(content))  # as a reader will parse it (tuples, int keys)
    stamp = {"sha256": canonical_digest(content), "place": store_place(at)}
    return json.dumps({**content, RECORD: stamp}, indent=indent) + "\n"


def write_json(path: str | os.PathLike, content: dict[str, Any], indent: int = 1) -> None:
    """Write a JSON record atomically (stages.store.write_text) with its digest and place."""
    from selfrepair.stages.store import write_text  # the Snakefile only reads: no zarr there

    write_text(path, json_text(content, path, indent))


def record_problem(path: str | os.PathLike, found: object) -> str | None:
    """What is wrong with the parsed JSON `found` of the record file at `path` (None when
    nothing is): it must be an object holding its record, whose digest is that of the rest and
    whose place is the end of path."""
    if not isinstance(found, dict):
        return "it is not a JSON object"
    stamp = found.get(RECORD)
    if not isinstance(stamp, dict) or not isinstance(stamp.get("sha256"), str):
        return "it records no digest of its content (an older workflow or another tool wrote it)"
    content = {k: v for k, v in found.items() if k != RECORD}
    if stamp["sha256"] != canonical_digest(content):
        return "its content is not what was written (its digest differs)"
    problem = place_problem(path, stamp.get("place"))
    return problem.replace("a store copied", "a file copied") if problem else None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON record written by write_json, without its record; DamagedRecord in one line naming
    the file and the fix when it cannot be read, is not what was written, or was written at
    another place; FileNotFoundError naming the fix when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the workflow stage that makes it")
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        problem: str | None = f"it cannot be read as JSON ({first_line(err)})"
    else:
        problem = record_problem(path, found)
    if problem:
        raise DamagedRecord(f"{path} is damaged: {problem}; delete {path} and rerun the workflow")
    return {k: v for k, v in found.items() if k != RECORD}


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A pick record written by rule pick_substitute (read_json: checked)."""
    return read_json(path)


def record_for(
    target_key: str, paths: Sequence[str | os.PathLike], missing_ok: bool = False
) -> dict[str, Any] | None:
    """The pick record among `paths` made for the target at config key `target_key` (the one
    place records are matched to targets). With missing_ok, None while some record is still to
    be made (a dry run's DAG: the heads are named once the pick is made).

    Args:
        target_key: the target's config key (FigureTarget.key).
        paths: a rule's pick record files.
        missing_ok: return None instead of failing while some of them do not exist yet.
    """
    existing = [p for p in paths if Path(p).exists()]
    for path in existing:
        record = read_record(path)
        if record["target"] == target_key:
            return record
    if missing_ok and len(existing) < len(paths):
        return None
    raise ValueError(f"no pick record for {target_key} among {list(paths)}: rerun the workflow")
