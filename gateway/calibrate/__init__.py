"""``lorafleet calibrate`` and ``lorafleet validate``: fit the twin's profile to a running vLLM
server through its HTTP API and ``/metrics``, and compare a scenario run on the server with
the twin's run (``sweep``, ``calibrate``, ``replay``, ``validate``, ``cli``)."""
