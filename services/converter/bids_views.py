"""The converter keeps each lab's BIDS dataset (`shared.bids`) in step: a study's session is
made again at each outcome of one of its series, removed when retention evicts the study,
and a lab's sessions named again when its rules change."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractRobustConnection

from services.converter.settings import ConverterSettings
from shared.bids.views import BidsViews
from shared.broker import consume
from shared.messages import (
    BIDS_CHANGES,
    BIDS_QUEUE,
    BidsChange,
    BidsRulesChanged,
    StudyEvicted,
)


async def keep_bids_views(
    connection: AbstractRobustConnection, settings: ConverterSettings, views: BidsViews
) -> None:
    """Run until cancelled: one change at a time, each settled after it is written."""

    async def on_change(event: BidsChange) -> None:
        if isinstance(event, StudyEvicted):
            await asyncio.to_thread(views.remove, event.study_instance_uid)
        elif isinstance(event, BidsRulesChanged):
            await asyncio.to_thread(views.refresh_lab, event.lab)
        else:
            await asyncio.to_thread(views.refresh, event.study_instance_uid)

    await consume(connection, settings.topology, BIDS_QUEUE, BIDS_CHANGES, on_change, prefetch=1)
