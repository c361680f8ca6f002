"""The replanner's admin routes (guarded, like every ``/admin/*`` route, by
``admin.admin_middleware``):

- ``POST /admin/replan`` ``{"dry_run": false, "fresh": false}``: plan again now. ``dry_run``
  returns the plan and the migration diff without acting; ``fresh`` plans from scratch
  (mapped onto the workers to move the fewest adapters) instead of the incremental re-plan.
- ``POST /admin/workers/{name}/drain``: route nothing new to the worker, move its adapters
  elsewhere (its requests in flight finish), then report it drained.
- ``POST /admin/workers/{name}/undrain``: give it back to the planner.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web

from gateway.errors import ApiError, clip
from gateway.fleet.metrics import ReplanTrigger
from gateway.openai_schema import OpenAIBody
from gateway.server.keys import CONTROL, FLEET
from gateway.server.protocol import parse_body, read_json

__all__ = ["ReplanRequest", "add_replan_routes"]


class ReplanRequest(OpenAIBody):
    """``POST /admin/replan``; unknown fields are refused."""

    model_config = OpenAIBody.model_config | {"extra": "forbid"}

    dry_run: bool = False
    fresh: bool = False


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    return (await read_json(request))[1]


async def replan(request: web.Request) -> web.Response:
    body = await _body(request)
    if not isinstance(body, dict):
        raise ApiError.bad_request("the request body must be a JSON object")
    parsed = parse_body(ReplanRequest, body)
    replanner = request.app[CONTROL].replanner
    result = await replanner.replan(ReplanTrigger.ADMIN, dry_run=parsed.dry_run,
                                    fresh=parsed.fresh)
    return web.json_response(result)


def _worker(request: web.Request) -> int:
    name = request.match_info["name"]
    for i, w in enumerate(request.app[FLEET].workers):
        if w.endpoint.name == name:
            return i
    raise ApiError(HTTPStatus.NOT_FOUND, "NotFoundError",
                   f"The worker `{clip(name)}` does not exist.", "name")


async def drain(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CONTROL].replanner.drain(_worker(request)))


async def undrain(request: web.Request) -> web.Response:
    index = _worker(request)
    request.app[CONTROL].replanner.undrain(index)
    w = request.app[FLEET].workers[index]
    return web.json_response({"worker": w.endpoint.name, "status": w.status.value})


def add_replan_routes(app: web.Application) -> None:
    app.router.add_post("/admin/replan", replan)
    app.router.add_post("/admin/workers/{name}/drain", drain)
    app.router.add_post("/admin/workers/{name}/undrain", undrain)
