# The lorafleet gateway (and the emulated worker: `lorafleet worker --emulate`).
#   docker build -t lorafleet:0.1.0 .
#   docker run -p 8080:8080 -v $PWD/gateway.yaml:/etc/lorafleet/gateway.yaml:ro lorafleet:0.1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CACHE_HOME=/var/cache/lorafleet

RUN groupadd --gid 10001 lorafleet \
    && useradd --uid 10001 --gid lorafleet --create-home --shell /usr/sbin/nologin lorafleet

WORKDIR /src
COPY pyproject.toml README.md ./
COPY twin ./twin
COPY planner ./planner
COPY gateway ./gateway
RUN pip install . \
    && cd / && rm -rf /src \
    # Load the shipped surrogate once (it is trained here only if this River is not the one
    # it was built with: then cached, not trained at every start).
    && python -c "from gateway.plan_cli import default_surrogate; default_surrogate()" \
    && chown -R lorafleet:lorafleet /var/cache/lorafleet

WORKDIR /home/lorafleet
USER lorafleet:lorafleet
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
ENTRYPOINT ["lorafleet"]
CMD ["serve", "--config", "/etc/lorafleet/gateway.yaml"]
