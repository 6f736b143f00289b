"""Metric names in PromQL expressions and in a Prometheus exposition, so that dashboards,
alerts and autoscaling can be checked against the metrics a worker really exports.

>>> sorted(metric_names('sum by (topic, le) (rate(retention_x_bucket{topic=~"$t"}[5m] offset 1h)) / time() > 2e3 unless up == 0'))
['retention_x_bucket', 'up']
>>> sorted(exported_names("# TYPE a_total counter\\n# TYPE h histogram\\n# TYPE g gauge\\n"))
['a_total', 'g', 'h_bucket', 'h_count', 'h_sum']
"""

from __future__ import annotations

import re

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "inf", "nan"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (functions, labels and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"(?<![A-Za-z0-9_:])\d[A-Za-z0-9_.]*", "", text)  # numbers and durations (offset 15m)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if match.group() in KEYWORDS or following.startswith("("):
            continue
        names.add(match.group())
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition can carry, from its ``# TYPE`` lines (so a labelled
    metric counts even before its first sample)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def families(exposition: str, prefix: str = "retention_") -> dict[str, set[str]]:
    """Family name -> its series names, for the families of our own metrics."""
    out = {}
    for line in exposition.splitlines():
        if line.startswith(f"# TYPE {prefix}") and not line.split()[2].endswith("_created"):
            _, _, name, kind = line.split()
            out[name] = {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return out
