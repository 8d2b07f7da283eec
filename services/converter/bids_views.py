"""The converter keeps each lab's BIDS dataset (`shared.bids`) in step: a study's session is
made again at the outcomes of its series, removed when retention evicts the study, and a
lab's sessions named again when its rules change.

The outcomes of one study come close together (its series complete at once, and skipped
ones convert in no time): what arrives within a second is taken as one batch, and each
study of it made once, after the last change of the batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from aio_pika.abc import AbstractRobustConnection

from services.converter.settings import ConverterSettings
from shared.bids.views import BidsViews
from shared.broker import consume_batches
from shared.messages import (
    BIDS_CHANGES,
    BIDS_QUEUE,
    BidsChange,
    BidsRulesChanged,
    StudyEvicted,
)

BATCH_WAIT = 1.0  # seconds a batch waits for more after its first change


def actions(views: BidsViews, changes: list[BidsChange]) -> list[Callable[[], object]]:
    """What `changes` ask of the views, each once, in the order of its last asking."""
    wanted: dict[tuple[str, str], Callable[[], object]] = {}
    for change in changes:
        key: tuple[str, str]
        action: Callable[[], object]
        if isinstance(change, StudyEvicted):
            key = ("remove", change.study_instance_uid)
            action = partial(views.remove, change.study_instance_uid)
        elif isinstance(change, BidsRulesChanged):
            key, action = ("lab", change.lab), partial(views.refresh_lab, change.lab)
        else:
            key = ("refresh", change.study_instance_uid)
            action = partial(views.refresh, change.study_instance_uid)
        wanted.pop(key, None)
        wanted[key] = action
    return list(wanted.values())


async def keep_bids_views(
    connection: AbstractRobustConnection, settings: ConverterSettings, views: BidsViews
) -> None:
    """Run until cancelled; each batch settled once its changes are written."""

    async def on_changes(changes: list[BidsChange]) -> None:
        for action in actions(views, changes):
            await asyncio.to_thread(action)

    await consume_batches(
        connection,
        settings.topology,
        BIDS_QUEUE,
        BIDS_CHANGES,
        on_changes,
        prefetch=64,
        max_batch=64,
        max_wait=BATCH_WAIT,
    )
