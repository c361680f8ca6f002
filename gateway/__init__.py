"""Gateway: the composition root (CLI now; the HTTP gateway is issue 8)."""

__all__: list[str] = []
