# The cramp-cds service: `cds serve` under uvicorn, settings from CDS_* variables (see docker-compose.yml).
# durable-rules 2.0.28 builds a C extension and does not build on Python 3.13: stay on 3.12.
FROM python:3.12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds ./cds
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /srv cds
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY rules /srv/rules
ENV CDS_RULES_DIR=/srv/rules \
    CDS_HOST=0.0.0.0 \
    CDS_PORT=8000 \
    PYTHONUNBUFFERED=1
USER cds
WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
# Never --dev here: authentication stays on; CDS_PATIENT_HASH_KEY, CDS_TRUSTED_ISSUERS and
# CDS_PUBLIC_BASE_URL (the URL clients call, e.g. https://cds.example.org: JWT audiences are checked
# against it) are required, or the service refuses to start. X-Forwarded-* headers are ignored unless
# CDS_TRUSTED_PROXIES lists the proxy's address (e.g. '["10.0.0.5"]').
CMD ["cds", "serve"]
