"""A model snapshot an attacker would write: its pickle runs a shell command when loaded
with plain ``pickle.loads`` (the unit and the integration tests of snapshot signing)."""

from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path


class RunsCode:
    """Unpickled, runs ``touch marker``: the test sees whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def crafted_models(marker: Path) -> bytes:
    """Model bytes as :func:`models.trainer.dump_models` writes them, of the crafted pickle."""
    return zlib.compress(pickle.dumps(RunsCode(marker)))
