"""``GET /actions/stats``: what the retention actions achieved, for the whole shop.

Each worker adds the attribution counts of every step (:class:`~streams.domain.uplift.Tally`:
decisions, matured windows, conversions, redemptions, outcomes) to one tally per partition,
kept in the partition's store with the users' states (RocksDB with a changelog: a partition's
counts move with it on a rebalance and survive a restart).

The whole shop is the sum over partitions. A worker answers ``?scope=local`` with the
tallies of the partitions it owns, and the plain request by asking every other worker
that owns partitions (the group's assignment of the ``owners`` table names their URLs, as it does for
``GET /users/{id}``) and summing: with one worker the answer is exact and local; with more,
``complete`` says whether every partition was counted (a peer that did not answer is
named in ``errors``). The rates and uplift intervals are computed from the summed counts
(:func:`streams.domain.uplift.report`), never by averaging per-worker rates.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import faust
import msgspec

from streams.domain.uplift import Tally, report, total
from streams.runtime import metrics
from streams.runtime.settings import Settings
from streams.runtime.web import bearer_headers

log = logging.getLogger(__name__)

PEER_TIMEOUT_S = 5.0


class ActionStats:
    def __init__(self, app: faust.App, settings: Settings, ingest: Any) -> None:
        self.app = app
        self.settings = settings
        self.ingest = ingest  #: the agent that folds batches: each partition's tally is in its store; peers own its ``owners`` table
        self.token = settings.bearer_token  # peers answer /actions/stats?scope=local to it

        @app.page("/actions/stats")
        async def stats_page(web: Any, request: Any) -> Any:
            return await self.page(web, request)

        app.timer(settings.metrics_interval_s, name="retention-uplift-metrics")(self.export)

    def local(self) -> tuple[Tally, list[int]]:
        return total(self.ingest.tallies()), sorted(self.ingest.owned_partitions())

    def peers(self) -> list[str]:
        """URLs of the other workers that own partitions."""
        try:
            hosts = self.app.router.table_metadata(self.ingest.owners.name)
        except Exception:  # no assignment yet
            return []
        own = str(self.app.conf.canonical_url).rstrip("/")
        return sorted(url.rstrip("/") for url in map(str, hosts) if url.rstrip("/") != own)

    async def _ask(self, session: aiohttp.ClientSession, url: str) -> tuple[Tally, list[int]]:
        async with session.get(f"{url}/actions/stats", params={"scope": "local"}) as response:
            response.raise_for_status()
            body = await response.json()
        return msgspec.convert(body["tally"], Tally), body["partitions"]

    async def whole_shop(self) -> tuple[Tally, list[int], dict[str, str]]:
        tally, partitions = self.local()
        peers = self.peers()
        errors: dict[str, str] = {}
        if peers:
            timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout, headers=bearer_headers(self.token)) as session:
                answers = await asyncio.gather(*(self._ask(session, url) for url in peers), return_exceptions=True)
            for url, answer in zip(peers, answers):
                if isinstance(answer, BaseException):
                    errors[url] = repr(answer)
                    continue
                tally.add(answer[0])
                partitions += answer[1]
        return tally, sorted(set(partitions)), errors

    async def page(self, web: Any, request: Any) -> Any:
        if request.query.get("scope") == "local":
            tally, partitions = self.local()
            return web.json({"partitions": partitions, "tally": msgspec.to_builtins(tally)})
        tally, partitions, errors = await self.whole_shop()
        return web.json({
            "complete": len(partitions) == self.settings.partitions and not errors,
            "partitions_counted": partitions,
            "errors": errors,
            "attribution_window_days": self.settings.attribution_window_days,
            "control_share": self.settings.policy.control_share,
            "control_by": self.settings.policy.control_by,
            **report(tally, self.settings.uplift_confidence),
        })

    async def export(self) -> None:
        """The uplift and control-share gauges, from this worker's partitions."""
        metrics.export_uplift(report(self.local()[0], self.settings.uplift_confidence))
