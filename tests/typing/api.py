"""Type-checked, never run: every public signature used the way users write it (mypy --strict)."""

from __future__ import annotations

from pathlib import Path
from typing import cast, get_args

import kling_async
from kling_async import (
    AspectRatio,
    Batch,
    Duration,
    Element,
    Endpoint,
    Event,
    EventStream,
    Job,
    Kling3AspectRatio,
    Kling3Request,
    KlingClient,
    ModelName,
    OmniRequest,
    Outcome,
    PollPolicy,
    RetryPolicy,
    Shot,
    ShotType,
    TaskHandle,
    TaskResult,
    TaskStatus,
    Timeouts,
    VideoReferenceRequest,
    WebhookReceiver,
)
from kling_async.testing import Faults, Simulator


async def everything() -> None:
    receiver = WebhookReceiver("whsec_c2VjcmV0", host="127.0.0.1", port=0, public_url=None)
    async with (
        Simulator(time_scale=0.01, faults=Faults(get_error_rate=0.1)) as sim,
        KlingClient(
            "key",
            sim.url,
            requests_per_second=10.0,
            burst=2,
            max_concurrency=8,
            max_in_flight=100,
            max_downloads=2,
            poll=PollPolicy(initial=15.0, maximum=30.0, multiplier=1.5, timeout=600.0),
            retry=RetryPolicy(attempts=5, initial=0.5, maximum=10.0, multiplier=2.0, deadline=60.0),
            timeouts=Timeouts(connect=5.0, read=20.0, total=40.0),
            webhooks=receiver,
        ) as client,
    ):
        omni = OmniRequest(
            prompt="a fox",
            duration="5",
            aspect_ratio="16:9",
            elements=[Element(reference_image_urls=["https://x/a.png"], frontal_image_url="https://x/b.png")],
        )
        shots = Kling3Request(multi_prompt=[Shot(prompt="a", duration="5"), Shot(prompt="b", duration="5")])
        ref = VideoReferenceRequest(video_url="https://x/v.mp4", prompt="@Video1 in snow")
        handle: TaskHandle = await client.submit(omni, model="kling-v3-omni-pro")
        task_id: str = handle.task_id
        status: str | None = handle.status
        result: TaskResult = await handle
        result = await handle.wait(timeout=600)
        fresh: TaskStatus = await handle.refresh()
        url: str | None = result.url
        urls: tuple[str, ...] = result.urls
        result = await client.generate(shots, model="kling-v3-pro")
        again: TaskHandle = client.task(task_id, model="kling-v3-omni-std")
        async for outcome in client.map([omni, Job(ref, id="ref-1", model="kling-v3-omni-std-reference")]):
            ok: bool = outcome.ok
            index: int = outcome.index
            key: str = outcome.key
        outcomes: list[Outcome] = await client.gather([omni], download="videos/", timeout=300.0)
        path: Path = await client.download(result, "videos/")
        stream: EventStream = client.events()
        async for event in stream:
            seen: Event = event
            break
        batch: Batch = client.map([omni])
        batch.stop_submitting()
        await batch.aclose()
        verified: TaskStatus = kling_async.verify_webhook({}, b"{}", "secret", 300.0)
        del status, fresh, url, urls, again, ok, index, key, outcomes, path, seen, verified


async def values_from_configuration(client: KlingClient, settings: dict[str, str]) -> None:
    """Names read at run time, checked by the user's code and annotated with the public Literal types."""
    model = settings["model"]
    if model not in get_args(ModelName):
        raise ValueError(f"model: one of {get_args(ModelName)}")
    chosen = cast(ModelName, model)
    seconds: Duration = "10" if settings.get("long") else "5"
    ratio: Kling3AspectRatio = "9:16"
    await client.submit(Kling3Request(prompt="a fox", duration=seconds, aspect_ratio=ratio), model=chosen)


async def misspelt_models(client: KlingClient, omni: OmniRequest) -> None:
    """The public verbs that take a model name reject a misspelt one (runtime strings: task, list_tasks)."""
    await client.submit(omni, model="kling-v3-omni-sdt")  # type: ignore[arg-type]
    await client.generate(omni, model="kling-v3-omni-sdt")  # type: ignore[arg-type]
    Job(omni, model="kling-v3-omni-sdt")  # type: ignore[arg-type]
    runtime: str = "kling-v3-omni-pro"
    client.task("t-1", model=runtime)
    await client.list_tasks(model=runtime)


def misspelt() -> None:
    """Each line is a typo mypy must reject: warn_unused_ignores fails the check if one is accepted."""
    model: ModelName = "kling-v3-omni-sdt"  # type: ignore[assignment]
    Endpoint("kling-v3-omni-sdt", "/p", "/f", OmniRequest)  # type: ignore[arg-type]
    OmniRequest(prompt="a fox", aspect_ratio="4:3")  # type: ignore[arg-type]
    OmniRequest(prompt="a fox", shot_type="intelligent")  # type: ignore[arg-type]
    OmniRequest(prompt="a fox", duration=5)  # type: ignore[arg-type]
    Kling3Request(prompt="a fox", aspect_ratio="auto")  # type: ignore[arg-type]
    Shot(prompt="a", duration="16")  # type: ignore[arg-type]
    VideoReferenceRequest(video_url="https://x/v.mp4", duration="2")  # type: ignore[arg-type]
    ratio: AspectRatio = "4:3"  # type: ignore[assignment]
    seconds: Duration = "20"  # type: ignore[assignment]
    shot: ShotType = "auto"  # type: ignore[assignment]
    del model, ratio, seconds, shot
