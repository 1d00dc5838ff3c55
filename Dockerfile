# A minimal Nitro image: the runtime dependencies only, installed by the same commands as `make run`
# (tests/test_packaging.py checks that they stay the Makefile's), run by an unprivileged user.
# No Docker engine runs on the project's machines: this file is written, not built, by the tests.
#   docker build -t nitro .
#   docker run -d --name nitro -p 5222:5222 -p 5223:5223 -v nitro-var:/opt/nitro/var nitro
#   docker exec -it nitro .venv/bin/nitro --config config/docker.toml user add alice
#   docker exec nitro .venv/bin/nitro --config config/docker.toml check
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --home-dir /opt/nitro --shell /usr/sbin/nologin nitro
WORKDIR /opt/nitro
COPY pyproject.toml README.md ./
COPY nitro/ nitro/
COPY config/ config/
RUN python3 -m venv .venv \
 && .venv/bin/pip install --quiet --upgrade pip \
 && .venv/bin/pip install --quiet -e . \
 && rm -rf /root/.cache/pip \
 && install -d -o nitro -g nitro -m 0750 var

USER nitro
VOLUME ["/opt/nitro/var"]
EXPOSE 5222 5223
STOPSIGNAL SIGTERM
CMD [".venv/bin/nitro", "--config", "config/docker.toml", "serve"]
