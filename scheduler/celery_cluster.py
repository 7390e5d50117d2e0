"""What the broker says about the Celery side: the queue's depth and each worker's heartbeat."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from .celery_app import KEY_PREFIX
from .records import CeleryWorkerStatus, ClusterStatus


async def read_cluster(client: aioredis.Redis, queue: str) -> ClusterStatus:
    names = sorted([key async for key in client.scan_iter(match=f"{KEY_PREFIX}worker:*")])
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)  # kombu's Redis transport keeps a queue's messages in a list of its name
    if names:
        pipe.mget(names)
    answers = await pipe.execute()
    workers = []
    for key, raw in zip(names, answers[1] if names else [], strict=True):
        if raw is None:  # expired between the scan and the read: gone
            continue
        beat = json.loads(raw)
        name = key.decode().removeprefix(f"{KEY_PREFIX}worker:")
        workers.append(CeleryWorkerStatus(name, int(beat["concurrency"]), int(beat["busy"])))
    return ClusterStatus(int(answers[0]), tuple(workers))
