"""The gateway's configuration (``gateway.yaml``), parsed into frozen values: the bottom of
the gateway's layers, importing nothing of ``gateway.server`` or ``gateway.shared``.

``settings`` holds ``GatewayConfig`` (pydantic) and ``loading`` its parser (``schema`` its
JSON Schema, for editors); ``entries``, ``keys``, ``engine``,
``fleet`` (the actuator's and discovery's specs) and ``redis`` its sections; ``validation``
the errors, one line naming the field; ``env`` the ``LORAFLEET_<FIELD>`` overrides.
"""

from gateway.config.loading import load_config, parse_config, read_config
from gateway.config.settings import (
    AdapterEntry,
    AdapterOrigin,
    GatewayConfig,
    PlacementMode,
    WorkerEndpoint,
)

__all__ = ["AdapterEntry", "AdapterOrigin", "GatewayConfig", "PlacementMode", "WorkerEndpoint",
           "load_config", "parse_config", "read_config"]
