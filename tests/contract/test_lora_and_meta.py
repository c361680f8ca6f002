"""LoRA load/unload, /v1/models, /health, /version over raw HTTP (aiohttp)."""

from __future__ import annotations

import json

import aiohttp
from openai import OpenAI

from tests.contract.helpers import get, post, unique
from tests.contract.target import Target


async def test_health_and_version(target: Target) -> None:
    assert (await get(target.base_url, "/health"))[0] == 200
    status, text = await get(target.base_url, "/version")
    assert status == 200 and "version" in json.loads(text)


async def test_models_base_card(target: Target) -> None:
    status, text = await get(target.base_url, "/v1/models")
    data = json.loads(text)
    assert status == 200 and data["object"] == "list"
    base = data["data"][0]
    assert base["id"] == target.model and base["parent"] is None
    assert base["owned_by"] == "vllm" and base["max_model_len"] == target.max_model_len
    assert base["permission"][0]["object"] == "model_permission"


async def test_load_list_use_unload(target: Target, client: OpenAI) -> None:
    name = unique("ad")
    base = target.base_url
    status, _, text = await post(base, "/v1/load_lora_adapter",
                                 {"lora_name": name, "lora_path": target.adapter_path})
    assert (status, text) == (200, f"Success: LoRA adapter '{name}' added successfully.")
    cards = {c["id"]: c for c in json.loads((await get(base, "/v1/models"))[1])["data"]}
    assert cards[name]["root"] == target.adapter_path
    assert cards[name]["parent"] == target.model and cards[name]["max_model_len"] is None
    out = client.completions.create(model=name, prompt="Hi", max_tokens=2)
    assert out.model == name
    # Loading the same name again is refused unless in place.
    status, _, text = await post(base, "/v1/load_lora_adapter",
                                 {"lora_name": name, "lora_path": target.adapter_path})
    error = json.loads(text)["error"]
    assert status == 400 and error["type"] == "InvalidUserInput" and error["code"] == 400
    assert error["message"] == (f"The lora adapter '{name}' has already been loaded. If you "
                                "want to load the adapter in place, set 'load_inplace' to True.")
    status, _, _ = await post(base, "/v1/load_lora_adapter", {
        "lora_name": name, "lora_path": target.adapter_path, "load_inplace": True})
    assert status == 200
    status, _, text = await post(base, "/v1/unload_lora_adapter", {"lora_name": name})
    assert (status, text) == (200, f"Success: LoRA adapter '{name}' removed successfully.")
    ids = [c["id"] for c in json.loads((await get(base, "/v1/models"))[1])["data"]]
    assert name not in ids
    status, _, text = await post(base, "/v1/completions",
                                 {"model": name, "prompt": "x", "max_tokens": 1})
    assert status == 404 and json.loads(text)["error"]["param"] == "model"


async def test_unload_unknown_is_404(target: Target) -> None:
    status, ctype, text = await post(target.base_url, "/v1/unload_lora_adapter",
                                     {"lora_name": "no-such-adapter"})
    assert status == 404 and ctype == "application/json"
    assert json.loads(text) == {"error": {
        "message": "The lora adapter 'no-such-adapter' cannot be found.",
        "type": "NotFoundError", "param": None, "code": 404}}


async def test_load_missing_path_is_404(target: Target) -> None:
    name = unique("missing")
    path = "/tmp/lorafleet-no-such-adapter"
    status, _, text = await post(target.base_url, "/v1/load_lora_adapter",
                                 {"lora_name": name, "lora_path": path})
    assert status == 404
    assert json.loads(text)["error"] == {
        "message": f"Loading lora {name} failed: No adapter found for <path>",
        "type": "NotFoundError", "param": None, "code": 404}


async def test_load_rank_above_max_is_500(target: Target) -> None:
    status, _, text = await post(target.base_url, "/v1/load_lora_adapter", {
        "lora_name": unique("big"), "lora_path": target.big_adapter_path})
    error = json.loads(text)["error"]
    assert status == 500 and error["type"] == "InternalServerError" and error["code"] == 500
    assert error["message"].startswith("Call to add_lora method failed: ")
    assert "is greater than max_lora_rank" in error["message"]


async def test_load_needs_json_content_type(target: Target) -> None:
    async with aiohttp.ClientSession() as s, s.post(
            target.base_url + "/v1/load_lora_adapter", data="lora_name=x") as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "Bad Request"
    assert "Only 'application/json' is allowed" in error["message"]
