# The hosted demo, with the same steps as `make serve`: Debian, the Fashion-MNIST package,
# the pinned install, the demo prepared by the CLI (store, saliency profiles, default probes
# and layout; the control model's store for Compare), then the app in hosted mode.
#   docker build -t biaslens . && docker run -p 8501:8501 biaslens
FROM debian:bookworm-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv python3-pip make ca-certificates dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml Makefile ./
COPY core ./core
COPY pages ./pages
COPY app.py ./
COPY .streamlit ./.streamlit
# The pinned install (torch 2.14.1, torchvision 0.29.1) into /app/.venv.
RUN make setup
# Prepare everything visitors need and cannot start now, so they only read it.
ENV BIASLENS_HOSTED=1 BIASLENS_CACHE=/app/cache
RUN .venv/bin/python -m core prepare demo && .venv/bin/python -m core prepare demo-control --only store

EXPOSE 8501
CMD ["make", "serve", "ADDRESS=0.0.0.0", "PORT=8501"]
