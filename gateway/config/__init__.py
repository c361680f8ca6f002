"""The gateway's configuration (``gateway.yaml``), parsed into frozen values: the bottom of
the gateway's layers, importing nothing of ``gateway.server`` or ``gateway.shared``.

``settings`` holds ``GatewayConfig`` and its parser; ``entries``, ``keys``, ``engine`` and
``redis`` its sections; ``env`` the ``LORAFLEET_<FIELD>`` overrides.
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
