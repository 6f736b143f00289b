"""Keep the README's generated tables (settings, features, metrics) in step with the code.

``python -m streams.readme`` rewrites every block between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->``; a unit test fails when the README is stale.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _generators() -> dict[str, Callable[[], str]]:
    from streams.domain.features import features_markdown
    from streams.runtime.metrics import metrics_markdown
    from streams.runtime.settings import settings_markdown

    return {"settings": settings_markdown, "features": features_markdown, "metrics": metrics_markdown}


def sync(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, generate in _generators().items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no <!-- generated:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + generate().strip() + "\n" + m.group(2), text)
    return text


def main() -> int:
    text = README.read_text()
    new = sync(text)
    if new != text:
        README.write_text(new)
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
