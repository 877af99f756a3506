# Herald's image: one entry point, `herald`; the Deployments run `herald worker --stage <stage>`,
# `herald gateway` and `herald migrate` (deploy/k8s). Build: `make image` (needs a Docker daemon).

# --- assets: the dashboard's script bundled with uPlot from the npm registry (web/, as `make assets`) ----------
FROM node:20-slim AS assets
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/src/ src/
RUN npm run build

# --- build: the herald wheel and the wheels of everything it needs ---------------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY streams/ streams/
COPY agents/ agents/
COPY sinks/ sinks/
COPY gateway/ gateway/
COPY --from=assets /src/gateway/static/dist/ gateway/static/dist/
COPY tooling/ tooling/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- run: the wheels installed into a slim Python, as a user without privileges ----------------------------
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin herald \
    && mkdir -p /var/lib/herald && chown herald /var/lib/herald
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels herald && rm -rf /wheels
USER 10001
WORKDIR /home/herald
ENV HERALD_DATA_DIR=/var/lib/herald PYTHONUNBUFFERED=1
ENTRYPOINT ["herald"]
CMD ["--help"]
