"""`retention scores export`: the columns of the table, for rows with and without loyalty."""

from __future__ import annotations

import json

from streams.domain.features import FEATURE_NAMES
from streams.domain.snapshots import decode_scores
from streams.runtime.export import rows
from tests.contract import SCHEMAS

EXAMPLES = json.loads((SCHEMAS / "examples" / "user-scores.json").read_text())["valid"]


def test_loyalty_columns_follow_the_churn_columns_and_older_rows_leave_them_empty() -> None:
    now, prior, older = (decode_scores(json.dumps(dict(EXAMPLES[i], user_id=f"u{i}")).encode()) for i in (0, 1, 2))
    columns, table = rows([older, prior, now])
    assert columns[:12] == [
        "user_id", "ts", "churn", "churn_model", "churn_prior", "loyalty", "loyalty_model", "loyalty_prior",
        "loyalty_score", "loyalty_tier", "lifecycle_stage", "segment",
    ]
    assert columns[12] == "segment_model" and columns[13:13 + len(FEATURE_NAMES)] == list(FEATURE_NAMES)
    by_user = {r["user_id"]: r for r in table}
    assert {k: by_user["u0"][k] for k in columns[5:10]} == {
        "loyalty": 0.42, "loyalty_model": "loyalty-log-linear+1913", "loyalty_prior": False,
        "loyalty_score": 0.31, "loyalty_tier": "bronze",
    }
    assert (by_user["u1"]["loyalty_prior"], by_user["u1"]["loyalty_tier"]) == (True, "silver")
    assert {k: by_user["u2"][k] for k in columns[5:10]} == dict.fromkeys(columns[5:10])  # published before loyalty
    assert by_user["u2"]["churn"] == 0.93 and by_user["u2"]["churn_prior"] is False
