"""State the gateway's replicas share in Redis: the leader lease, fleet-wide per-key limits,
the published placement and every replica's observations (``gateway.yaml``'s ``redis:``).

Nothing here imports ``gateway.server``: the server composes these parts.
"""
