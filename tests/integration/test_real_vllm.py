"""The real vLLM CPU server on the tiny model: the behaviours lorafleet copies, checked live.

Each test is independent of the others' order: runtime loads use their own adapter and undo
what they change. Error responses are compared with ``observed_errors.json`` and the metric
families with ``vllm_metric_names.txt`` (``LORAFLEET_RECORD_VLLM=1`` rewrites both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from . import goldens
from .conftest import Observed
from .server import RealVllm

pytestmark = pytest.mark.real_vllm

PROMPT = "Hello tiny world, please answer"
GREEDY: dict[str, Any] = {"temperature": 0.0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}
# Metric families /work/shared/VLLM.md says lorafleet reads (names as `# TYPE` writes them).
VLLM_MD_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:lora_requests_info",
)


async def call(
    real_vllm: RealVllm, method: str, path: str, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One HTTP call; returns ``{"request", "status", "content_type", "body"}`` as recorded."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, real_vllm.base_url + path, json=payload) as resp,
    ):
        content_type = resp.headers.get("Content-Type")
        text = await resp.text()
        is_json = content_type is not None and content_type.startswith("application/json")
        body = await resp.json() if is_json else text
    return {
        "request": {"method": method, "path": path, "json": payload},
        "status": resp.status,
        "content_type": content_type,
        "body": body,
    }


async def load(real_vllm: RealVllm, name: str, path: Path | str, **extra: Any) -> dict[str, Any]:
    payload = {"lora_name": name, "lora_path": str(path), **extra}
    return await call(real_vllm, "POST", "/v1/load_lora_adapter", payload)


async def unload(real_vllm: RealVllm, name: str) -> dict[str, Any]:
    return await call(real_vllm, "POST", "/v1/unload_lora_adapter", {"lora_name": name})


async def model_cards(real_vllm: RealVllm) -> dict[str, dict[str, Any]]:
    listed = await call(real_vllm, "GET", "/v1/models")
    assert listed["status"] == 200
    return {card["id"]: card for card in listed["body"]["data"]}


def complete(real_vllm: RealVllm, model: str) -> openai.types.Completion:
    with openai.OpenAI(base_url=real_vllm.api_url, api_key="unused", max_retries=0) as client:
        return client.completions.create(model=model, prompt=PROMPT, **GREEDY)


# --- completions and chat -------------------------------------------------------------------


def test_completion_on_base_model(real_vllm: RealVllm) -> None:
    out = complete(real_vllm, real_vllm.model)
    assert out.model == real_vllm.model
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 8


def test_chat_on_base_model(real_vllm: RealVllm) -> None:
    with openai.OpenAI(base_url=real_vllm.api_url, api_key="unused", max_retries=0) as client:
        out = client.chat.completions.create(
            model=real_vllm.model,
            messages=[
                {"role": "system", "content": "You are tiny."},
                {"role": "user", "content": "Write a short story about a cat."},
            ],
            **GREEDY,
        )
    assert out.choices[0].message.role == "assistant"
    assert isinstance(out.choices[0].message.content, str)
    assert out.usage is not None and out.usage.completion_tokens == 8


async def test_streaming_chat_on_startup_adapter(real_vllm: RealVllm) -> None:
    async with openai.AsyncOpenAI(
        base_url=real_vllm.api_url, api_key="unused", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model=real_vllm.startup_adapter,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert {c.model for c in chunks} == {real_vllm.startup_adapter}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_startup_adapter_changes_the_output(real_vllm: RealVllm) -> None:
    # init_lora_weights=False gives random A and B: the adapter must change greedy decoding.
    base = complete(real_vllm, real_vllm.model)
    lora = complete(real_vllm, real_vllm.startup_adapter)
    assert lora.model == real_vllm.startup_adapter
    assert lora.usage is not None and lora.usage.completion_tokens == 8
    assert lora.choices[0].text != base.choices[0].text


# --- runtime LoRA loading -------------------------------------------------------------------


async def test_runtime_load_use_unload_reload(real_vllm: RealVllm, observed: Observed) -> None:
    name = "tiny-b-r16"
    path = real_vllm.adapters[name]
    loaded = await load(real_vllm, name, path)
    observed.check("load_success", loaded)
    assert loaded["status"] == 200
    try:
        cards = await model_cards(real_vllm)
        assert cards[name]["root"] == str(path)
        assert cards[name]["parent"] == real_vllm.model
        out = complete(real_vllm, name)
        assert out.model == name and out.choices[0].text
        inplace = await load(real_vllm, name, path, load_inplace=True)
        observed.check("load_inplace_existing", inplace)
    finally:
        unloaded = await unload(real_vllm, name)
    observed.check("unload_success", unloaded)
    assert unloaded["status"] == 200
    assert name not in await model_cards(real_vllm)
    gone = await call(
        real_vllm, "POST", "/v1/completions", {"model": name, "prompt": PROMPT, "max_tokens": 2}
    )
    observed.check("completion_unloaded_adapter", gone)
    # Unload forgets the name at the API layer only; the same name loads again.
    again = await load(real_vllm, name, path)
    assert again["status"] == 200
    assert (await unload(real_vllm, name))["status"] == 200


async def test_load_existing_name_is_400(real_vllm: RealVllm, observed: Observed) -> None:
    name = real_vllm.startup_adapter
    got = await load(real_vllm, name, real_vllm.adapters[name])
    observed.check("load_existing_name", got)
    assert got["status"] == 400
    assert got["body"]["error"]["type"] == "InvalidUserInput"
    assert got["body"]["error"]["code"] == 400


async def test_unload_unknown_is_404(real_vllm: RealVllm, observed: Observed) -> None:
    got = await unload(real_vllm, "no-such-adapter")
    observed.check("unload_unknown", got)
    assert got["status"] == 404
    assert got["body"]["error"]["type"] == "NotFoundError"


async def test_rank_above_max_is_500(real_vllm: RealVllm, observed: Observed) -> None:
    name = "tiny-big-r32"
    assert real_vllm.ranks[name] == 32
    got = await load(real_vllm, name, real_vllm.adapters[name])
    observed.check("load_rank_above_max", got)
    assert got["status"] == 500
    assert got["body"]["error"]["type"] == "InternalServerError"
    # The failed load leaves the server healthy and the name unknown.
    assert (await call(real_vllm, "GET", "/health"))["status"] == 200
    assert name not in await model_cards(real_vllm)
    assert complete(real_vllm, real_vllm.model).choices[0].text


async def test_path_without_adapter_is_404(
    real_vllm: RealVllm, observed: Observed, tmp_path: Path
) -> None:
    # An empty folder under /tmp (vLLM masks it as <path>) ...
    got = await load(real_vllm, "empty-dir", tmp_path)
    observed.check("load_empty_dir", got, tmp_path)
    assert got["status"] == 404
    assert got["body"]["error"]["type"] == "NotFoundError"
    # ... and a missing folder outside the masked roots (its path shows).
    missing = real_vllm.cache_dir / "adapters" / "no-such-adapter"
    got = await load(real_vllm, "missing-dir", missing)
    observed.check("load_missing_dir", got)
    assert got["status"] == 404
    assert "empty-dir" not in await model_cards(real_vllm)


async def test_load_needs_json_content_type(real_vllm: RealVllm, observed: Observed) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            real_vllm.base_url + "/v1/load_lora_adapter", data="lora_name=x&lora_path=y"
        ) as resp,
    ):
        got = {
            "request": {"method": "POST", "path": "/v1/load_lora_adapter", "form": True},
            "status": resp.status,
            "content_type": resp.headers.get("Content-Type"),
            "body": await resp.json(),
        }
    observed.check("load_not_json", got)
    assert got["status"] == 400


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
async def test_unknown_model_is_404_on_model(
    real_vllm: RealVllm, observed: Observed, route: str
) -> None:
    payload: dict[str, Any] = {"model": "no-such-model", "max_tokens": 2}
    if route == "/v1/completions":
        payload["prompt"] = PROMPT
    else:
        payload["messages"] = [{"role": "user", "content": "hi"}]
    got = await call(real_vllm, "POST", route, payload)
    observed.check(f"unknown_model{route.replace('/', '_')}", got)
    assert got["status"] == 404
    assert got["body"]["error"]["param"] == "model"
    assert got["body"]["error"]["type"] == "NotFoundError"


def test_unknown_model_raises_openai_not_found(real_vllm: RealVllm) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        complete(real_vllm, "no-such-model")
    assert err.value.status_code == 404


# --- discovery and metrics ------------------------------------------------------------------


async def test_models_cards(real_vllm: RealVllm, observed: Observed) -> None:
    cards = await model_cards(real_vllm)
    base = cards[real_vllm.model]
    assert base["parent"] is None
    assert base["max_model_len"] == 512
    assert base["owned_by"] == "vllm"
    assert base["root"] == str(real_vllm.cache_dir / "base")
    lora = cards[real_vllm.startup_adapter]
    assert lora["parent"] == real_vllm.model
    assert lora["root"] == str(real_vllm.adapters[real_vllm.startup_adapter])
    assert lora["owned_by"] == "vllm"
    assert lora["max_model_len"] is None
    # The card layout, volatile values (timestamps, permission ids) blanked.
    shape = {
        "base": _blank_volatile(base),
        "adapter": _blank_volatile(lora),
    }
    observed.check("models_cards", {"status": 200, "body": shape})


def _blank_volatile(card: dict[str, Any]) -> dict[str, Any]:
    card = {**card, "created": "*"}
    card["permission"] = [{**p, "id": "*", "created": "*"} for p in card["permission"]]
    return card


async def test_metrics_families(real_vllm: RealVllm) -> None:
    complete(real_vllm, real_vllm.startup_adapter)  # so every labelled series has a sample
    scraped = await call(real_vllm, "GET", "/metrics")
    assert scraped["status"] == 200
    text = scraped["body"]
    families = goldens.metric_families(text)
    assert goldens.missing(VLLM_MD_METRICS, families) == []
    assert "vllm:gpu_cache_usage_perc" not in families
    assert families["vllm:lora_requests_info"] == (
        "gauge",
        frozenset({"max_lora", "running_lora_adapters", "waiting_lora_adapters"}),
    )
    for reason in ("capacity", "deferred"):
        assert f'reason="{reason}"' in text
    for name in VLLM_MD_METRICS[:8]:
        assert {"engine", "model_name"} <= families[name][1], name
    if goldens.recording():
        goldens.METRICS_FILE.write_text(goldens.format_metric_families(families))
    else:
        assert families == goldens.read_metric_families()
