# plugstrip as a container (see compose.yml). BASE is any Debian-based image with Python
# >= 3.11; PIP_ARGS lets a build with no package index install from wheels put in the
# build context (e.g. PIP_ARGS="--no-index --find-links=/src/wheels"). The image needs
# iptables (the same backend as the host's; Debian 12's is nft), nftables (security
# groups on plugstrip/weave) and catatonit (network holders are made from it), installed
# here if the base lacks them.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
RUN if ! command -v iptables >/dev/null || ! command -v nft >/dev/null \
      || ! command -v catatonit >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends iptables nftables catatonit \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY . .
ARG PIP_ARGS=""
RUN python3 -m venv /opt/plugstrip \
    && /opt/plugstrip/bin/pip install --no-cache-dir ${PIP_ARGS} . \
    && rm -rf /src
WORKDIR /
ENV PATH=/opt/plugstrip/bin:$PATH
ENTRYPOINT ["plugstrip", "serve"]
CMD ["--upstream", "unix:///var/run/docker.sock", "--listen", "unix:///run/plugstrip/docker.sock", "--admin", "tcp://127.0.0.1:9323", "--state-dir", "/var/lib/plugstrip"]
