"""Model snapshots are pickles, so a record on ``model-snapshots`` that no trainer wrote
must never be loaded: it would run code on every worker. Two locks, in this order:

1. :func:`sign` / :func:`check`: an HMAC-SHA256 of the record's bytes with a key every
   worker shares (``RETENTION_SNAPSHOT_KEY``), checked in constant time *before* anything
   is decompressed or unpickled. Rotation: sign with the current key, accept the current
   and the previous ones.
2. :func:`restricted_loads`: even a signed pickle may name only the globals a bundle is
   made of (River and our ``models`` classes, a few listed functions, numpy arrays); any
   other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``...) is refused
   before it is imported.

A refusal is a :class:`Refused` with a bounded ``reason`` (a metric label).

>>> keys = SnapshotKeys(sign=b"k" * 32, accept=(b"k" * 32,))
>>> check(keys, b"body", sign(keys.sign, b"body"))
>>> check(SnapshotKeys(b"x" * 32, (b"x" * 32,)), b"body", sign(keys.sign, b"body"))
Traceback (most recent call last):
...
models.signing.Refused: bad_signature: signed with a key this worker does not accept
"""

from __future__ import annotations

import hashlib
import hmac
import io
import pickle
import random
from typing import Any, NamedTuple

#: Shortest key accepted, in characters (``secrets.token_hex(32)`` gives 64).
KEY_MIN_CHARS = 32

#: What the MAC covers besides the record, so a MAC made for anything else never verifies.
_DOMAIN = b"retention-streams/model-snapshot/v2\0"

#: Every reason a snapshot is refused (the values of the refusal counter's label).
REASONS = ("unsigned", "bad_signature", "malformed", "newer_format", "forbidden_global")

UNSIGNED = "unsigned (written before signing; the trainer republishes)"


class Refused(ValueError):
    """A snapshot this worker will not load; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SnapshotKeys(NamedTuple):
    """The key the trainer signs with, and every key a snapshot may be signed with
    (the signing key first, then the previous ones during a rotation)."""

    sign: bytes
    accept: tuple[bytes, ...]


def sign(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + body, hashlib.sha256).digest()


def check(keys: SnapshotKeys, body: bytes, signature: bytes | None) -> None:
    """Raise :class:`Refused` unless ``signature`` is the MAC of ``body`` under an accepted key.
    Every key is tried (constant time each), so the time says nothing about which matched."""
    if not signature:
        raise Refused("unsigned", UNSIGNED)
    matched = False
    for key in keys.accept:
        matched |= hmac.compare_digest(sign(key, body), signature)
    if not matched:
        raise Refused("bad_signature", "signed with a key this worker does not accept")


#: Packages whose *classes* a bundle is made of (the learner zoo changes with River's
#: versions, so its classes are allowed by package; their constructors only store state).
CLASS_PACKAGES = ("river", "models")

#: Other globals a bundle needs, exactly: found by unpickling bundles of every learner kind.
ALLOWED_GLOBALS = frozenset({
    # plain value types (e.g. the default of a defaultdict); never eval, exec, getattr, open, __import__...
    *(("builtins", t) for t in ("bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict",
                                 "set", "frozenset", "slice", "range")),
    ("collections", "defaultdict"), ("collections", "deque"), ("collections", "Counter"), ("collections", "OrderedDict"),
    ("functools", "partial"),
    ("math", "expm1"), ("math", "log1p"),
    ("random", "Random"),
    ("statistics", "NormalDist"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
    ("streams.domain.evaluation", "ReplayModels"),  # the bundle of `retention evaluate`'s in-process replay
    ("models.churn", "log_features"),
    ("models.sentiment", "tokens"),
    ("river.tree.splitter.ebst_splitter", "EBSTNode._update_estimator_univariate"),
})


#: Bound methods a bundle holds (River's KMeans draws its initial centres with
#: ``partial(Random(seed).gauss, ...)``): pickled as ``getattr(instance, name)``, which is
#: allowed for these only.
BOUND_METHODS = {random.Random: frozenset({"gauss", "random", "uniform", "normalvariate"})}


def _method(instance: Any, name: str) -> Any:
    """The ``getattr`` a pickle gets: a listed method of an instance of a listed class."""
    if name not in BOUND_METHODS.get(type(instance), ()):
        raise Refused("forbidden_global", f"the pickle takes the attribute {name!r} of a {type(instance).__name__}")
    return getattr(instance, name)


def _in_packages(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in CLASS_PACKAGES)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _method
        listed = (module, name) in ALLOWED_GLOBALS
        if not listed and not (_in_packages(module) and name.isidentifier()):
            raise Refused("forbidden_global", f"the pickle names {module}.{name}")
        found = super().find_class(module, name)  # (imports the module: only an allowed one)
        if listed:
            return found
        if isinstance(found, type) and _in_packages(found.__module__):
            return found
        # e.g. a module or a function imported into one of ours (models.trainer.pickle)
        raise Refused("forbidden_global", f"the pickle names {module}.{name}, not a class of {'/'.join(CLASS_PACKAGES)}")


def restricted_loads(data: bytes) -> Any:
    """``pickle.loads`` that refuses any global a model bundle is not made of.

    >>> restricted_loads(pickle.dumps({"a": [1.5, (2, "x")]}))
    {'a': [1.5, (2, 'x')]}
    >>> import os; restricted_loads(pickle.dumps(os.getcwd))
    Traceback (most recent call last):
    ...
    models.signing.Refused: forbidden_global: the pickle names posix.getcwd
    """
    return _RestrictedUnpickler(io.BytesIO(data)).load()
