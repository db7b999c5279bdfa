# plugstrip as a container. BASE can be any image with Python >= 3.11 and pip; PIP_ARGS lets
# a build with no index install from wheels prepared beside the source
# (e.g. --build-arg PIP_ARGS="--no-index --find-links=/src/wheels").
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy proxy
COPY adapters adapters
COPY netdrivers netdrivers
ARG PIP_ARGS=""
RUN pip install --no-cache-dir ${PIP_ARGS} . && rm -rf /src/*
ENTRYPOINT ["plugstrip", "serve"]
CMD ["--upstream", "unix:///var/run/docker.sock", "--listen", "unix:///run/plugstrip/docker.sock", "--admin", "tcp://127.0.0.1:9323", "--state-dir", "/var/lib/plugstrip"]
