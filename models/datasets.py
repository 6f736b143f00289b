"""A real public transaction history: CDNOW, read from the ``Lifetimes`` wheel's package data.

CDNOW (an online CD shop) is the cohort of 23,570 customers who made their first-ever
purchase there in the first quarter of 1997, with every purchase up to 1998-06-30
(69,659 records, dates only), as published by Fader and Hardie; its 1/10th sample of
2,357 customers (6,919 records) is the data set of the BG/NBD paper. Source and licence
are in ``docs/bgnbd.md``.

Only the data file is used: ``Lifetimes`` (archived) is never imported. Its installed file
is found through the distribution's metadata, which imports nothing (``importlib.resources``
would import the package, and with it pandas and autograd). Install it with the ``eval``
extra: ``pip install -e '.[eval]'``.

>>> rows = list(cdnow(sample=True))
>>> rows[0]
Transaction(customer_id='00004', ts=852076800000, amount=29.33)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

MS_PER_DAY = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

#: The distribution that ships the files, and where they are inside it.
DISTRIBUTION = "Lifetimes"
MASTER = "lifetimes/datasets/CDNOW_master.txt"
SAMPLE = "lifetimes/datasets/CDNOW_sample.txt"
#: The paper's per-customer summary of the sample (x, t_x, T in weeks at 1997-09-30).
SAMPLE_SUMMARY = "lifetimes/datasets/cdnow_customers_summary.csv"


class Transaction(NamedTuple):
    customer_id: str
    ts: int  #: epoch milliseconds, UTC midnight of the purchase date (the data has dates only)
    amount: float  #: US dollars


class DatasetMissing(LookupError):
    """The package that ships the data is not installed."""


def packaged_file(relative: str, distribution: str = DISTRIBUTION) -> Path:
    """The installed path of a data file inside ``distribution``'s wheel."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise DatasetMissing(f"{distribution} is not installed: pip install -e '.[eval]'") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DatasetMissing(f"{relative} is not in the installed {distribution}")
    return path


def _epoch_ms(yyyymmdd: str) -> int:
    d = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    return (d.toordinal() - _EPOCH_ORDINAL) * MS_PER_DAY


def cdnow(sample: bool = False) -> Iterator[Transaction]:
    """CDNOW purchases in file order (by customer, then date): the master file's 69,659,
    or with ``sample`` the 6,919 of the 2,357-customer sample (ids are the master's).

    A record is one day's purchase of ``number_of_cds`` CDs; some customers have two
    records on one day (purchase days, as :func:`models.bgnbd.summarize` counts, merge them).
    """
    path = packaged_file(SAMPLE if sample else MASTER)
    with path.open(encoding="ascii") as lines:
        for line in lines:
            fields = line.split()
            if not fields or not fields[0].isdigit():
                continue  # the master file's header line
            if sample:
                customer, _sample_id, day, _cds, amount = fields
            else:
                customer, day, _cds, amount = fields
            yield Transaction(customer, _epoch_ms(day), float(amount))
