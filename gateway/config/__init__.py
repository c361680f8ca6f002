"""The gateway's configuration (``gateway.yaml``), parsed into frozen values: the bottom of
the gateway's layers, importing nothing of ``gateway.server`` or ``gateway.shared``.

``settings`` holds ``GatewayConfig`` and its parser; ``entries``, ``keys``, ``engine``,
``fleet`` (the actuator's and discovery's specs) and ``redis`` its sections; ``validation``
the errors, one line naming the field; ``env`` the ``LORAFLEET_<FIELD>`` overrides.
"""

from gateway.config.settings import (
    AdapterEntry,
    AdapterOrigin,
    GatewayConfig,
    PlacementMode,
    WorkerEndpoint,
    load_config,
    parse_config,
    read_config,
)

__all__ = ["AdapterEntry", "AdapterOrigin", "GatewayConfig", "PlacementMode", "WorkerEndpoint",
           "load_config", "parse_config", "read_config"]
