"""``retention scores export``: every user's latest snapshot from ``user-scores``, as a
CSV or Parquet table for marketing and analysts.

One row per user (the latest record of each key), columns: ``user_id``, ``ts``, one
``<score>`` and ``<score>_model`` per score, ``<score>_prior`` (true while the score
came from a prior; empty when the row has no such score; churn, then loyalty, then any other), ``loyalty_score`` and
``loyalty_tier`` (derived from the loyalty score), ``lifecycle_stage``, ``segment`` and
``segment_model``, then every feature in the README's order. Values a row does not carry
(rows published before loyalty, stages or segments existed) are empty.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from streams.domain.features import FEATURE_NAMES
from streams.domain.snapshots import UserScores, decode_scores
from streams.runtime.kafka import read_to_end
from streams.runtime.settings import Settings

SCORES = ("churn", "loyalty")
#: Derived from the loyalty score (no model or prior of their own): one column each.
LOYALTY_COLUMNS = ("loyalty_score", "loyalty_tier")
SEGMENT_COLUMNS = ("lifecycle_stage", "segment", "segment_model")


FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def export_format(path: Path, fmt: str | None) -> str:
    """The format to write: ``fmt`` when given, else the file's suffix; a ValueError that
    says what to do when neither names csv or parquet (never a CSV under another name).

    >>> export_format(Path("scores.parquet"), None), export_format(Path("scores.txt"), "csv")
    ('parquet', 'csv')
    >>> export_format(Path("x.json"), None)
    Traceback (most recent call last):
    ...
    ValueError: cannot tell the format of x.json from its suffix '.json': name it .csv or .parquet, or give --format csv or parquet
    """
    if fmt is not None:
        if fmt.lower() not in set(FORMATS.values()):
            raise ValueError(f"unknown format {fmt!r}: csv or parquet")
        return fmt.lower()
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path} from its suffix {suffix or '(none)'!r}: "
                         "name it .csv or .parquet, or give --format csv or parquet")
    return FORMATS[suffix]


def latest_scores(settings: Settings) -> dict[str, UserScores]:
    """The latest snapshot per user (records of a key are in one partition, in order)."""
    latest: dict[str, UserScores] = {}
    for msg in read_to_end(settings, settings.topic_scores):
        if msg.value() is None:  # a tombstone: the customer was erased (or moved to a new pseudonym)
            latest.pop((msg.key() or b"").decode("utf-8", "replace"), None)
            continue
        row = decode_scores(msg.value())
        latest[row.user_id] = row
    return latest


def rows(snapshots: Iterable[UserScores]) -> tuple[list[str], list[dict[str, Any]]]:
    snapshots = sorted(snapshots, key=lambda r: r.user_id)
    scores = list(SCORES) + sorted({s for r in snapshots for s in r.scores} - set(SCORES) - set(LOYALTY_COLUMNS))
    features = list(FEATURE_NAMES) + sorted({f for r in snapshots for f in r.features} - set(FEATURE_NAMES))
    columns = (
        ["user_id", "ts"] + [c for s in scores for c in (s, f"{s}_model", f"{s}_prior")]
        + list(LOYALTY_COLUMNS) + list(SEGMENT_COLUMNS) + features
    )
    out = []
    for r in snapshots:
        row: dict[str, Any] = {"user_id": r.user_id, "ts": r.ts}
        for s in scores:
            row[s] = r.scores.get(s)
            row[f"{s}_model"] = r.model_versions.get(s)
            row[f"{s}_prior"] = s in r.priors if s in r.scores else None
        row["loyalty_score"] = r.scores.get("loyalty_score")
        row["loyalty_tier"] = None if r.loyalty_tier is msgspec.UNSET else r.loyalty_tier
        row["lifecycle_stage"] = None if r.lifecycle_stage is msgspec.UNSET else r.lifecycle_stage.value
        row["segment"] = None if r.segment is msgspec.UNSET else r.segment
        row["segment_model"] = r.model_versions.get("segment")
        row.update({f: r.features.get(f) for f in features})
        out.append(row)
    return columns, out


def write(path: Path, columns: list[str], table: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(table, schema=None).select(columns), path)
    else:
        raise ValueError(f"unknown format {fmt!r}: csv or parquet")
