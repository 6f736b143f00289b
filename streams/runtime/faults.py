"""Failures of the machine, not of a record: they stop the worker instead of dead-lettering.

A record whose processing raises is dead-lettered (a bug or a bad record must not stop the
stream). A full disk or a broken state store raises too, but dead-lettering then would lose
valid records: the worker stops without acknowledging the record, which is read again once
the operator has fixed the machine.

>>> infrastructure_failure(Exception("IO error: No space left on device: While appending to file: 000004.log"))
True
>>> infrastructure_failure(OSError(28, "No space left on device")), infrastructure_failure(KeyError("x"))
(True, False)

A broker that lost its data (memory storage restarted, topics deleted) shows as changelogs
shorter than what the worker's local state has read: Faust's recovery raises
``ConsistencyError``, and the worker says what it means (:func:`broker_data_lost`).
"""

from __future__ import annotations

#: How RocksDB (rocksdict raises a plain Exception) words the failures of its files.
_STORE_FAILURES = ("IO error", "Corruption", "Resource busy", "Result incomplete")


def infrastructure_failure(exc: BaseException) -> bool:
    """True for errors of the disk, memory or state store (not of the record being processed)."""
    if isinstance(exc, (OSError, MemoryError)):
        return True
    text = str(exc)
    return text.startswith(_STORE_FAILURES) or "No space left on device" in text


def operator_hint(exc: BaseException) -> str:
    """What the operator should do about an infrastructure failure, in one line."""
    text = str(exc)
    if "No space left" in text or getattr(exc, "errno", None) == 28:
        return "the state directory's disk is full: free space or grow the volume of RETENTION_DATA_DIR, then restart"
    if isinstance(exc, MemoryError):
        return "the worker ran out of memory: raise its memory limit or lower its caches, then restart"
    return "the state directory cannot be written (RETENTION_DATA_DIR): check its volume and permissions, then restart"


#: What the operator reads when a changelog is shorter than the local state (see the module doc).
BROKER_DATA_LOST = (
    "the broker lost its data: a changelog is shorter than this worker's local state (a broker with memory storage "
    "restarted, or topics deleted; on the embedded broker also its under-reported end of a log after a crash). "
    "Wipe RETENTION_DATA_DIR and restart (state is rebuilt from the changelogs; on a broker that lost everything, "
    "recreate the topics first: retention topics create), or restore the topics"
)


class BrokerDataLost(Exception):
    """A log ends before an offset this worker has read or stored (a fetch there is out of
    range, and not because retention deleted the records before it)."""


def broker_data_lost(exc: BaseException) -> bool:
    """True for a log found shorter than what this worker read or stored: our own check, or
    Faust's recovery finding a changelog shorter than the local state.

    >>> from faust.exceptions import ConsistencyError
    >>> broker_data_lost(ConsistencyError("The persisted offset ... is higher than the last offset")), broker_data_lost(KeyError())
    (True, False)
    >>> broker_data_lost(BrokerDataLost("clicks[0] ends before offset 17"))
    True
    """
    from faust.exceptions import ConsistencyError

    return isinstance(exc, (ConsistencyError, BrokerDataLost))
