"""Shared helpers for tests that check things against the JSON Schema contract."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"


@cache
def validator(topic: str) -> jsonschema.Draft202012Validator:
    """A validator for a topic's v1 schema that also checks ``format`` (date-time)."""
    schema = json.loads((SCHEMAS / f"{topic}.v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(topic: str, value: object) -> list[str]:
    return [error.message for error in validator(topic).iter_errors(value)]
