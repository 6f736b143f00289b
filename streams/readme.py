"""Keep the documentation's generated tables (settings, features, metrics) in step with the code.

``python -m streams.readme`` rewrites every block between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->`` in README.md and docs/*.md; each table appears exactly once.
A unit test fails when a page is stale.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def pages() -> list[Path]:
    """The pages that may hold generated tables."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _generators() -> dict[str, Callable[[], str]]:
    from streams.domain.features import features_markdown
    from streams.runtime.metrics import metrics_markdown
    from streams.runtime.settings import settings_markdown

    return {"settings": settings_markdown, "features": features_markdown, "metrics": metrics_markdown}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)


def sync(text: str, names: list[str] | None = None) -> str:
    """``text`` with its generated blocks (``names``: those it must hold; default all)
    replaced by their current content."""
    for name, generate in _generators().items():
        pattern = _pattern(name)
        if not pattern.search(text):
            if names is None or name in names:
                raise ValueError(f"no <!-- generated:{name} --> block")
            continue
        text = pattern.sub(lambda m: m.group(1) + generate().strip() + "\n" + m.group(2), text)
    return text


def synced() -> dict[Path, tuple[str, str]]:
    """Each page's (current text, text with current tables); every table must be on one page."""
    found: dict[str, list[Path]] = {name: [] for name in _generators()}
    out = {}
    for page in pages():
        text = page.read_text()
        for name in found:
            if _pattern(name).search(text):
                found[name].append(page)
        out[page] = (text, sync(text, names=[]))
    misplaced = {name: [p.name for p in where] for name, where in found.items() if len(where) != 1}
    if misplaced:
        raise ValueError(f"each generated table must be on exactly one page: {misplaced}")
    return out


def main() -> int:
    for page, (text, new) in synced().items():
        if new != text:
            page.write_text(new)
            print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
