"""Gateway: the composition root: the ``lorafleet`` CLI, the OpenAI-compatible gateway
(``gateway.server``) and the emulated vLLM worker (``gateway.emulator``)."""

__all__: list[str] = []
