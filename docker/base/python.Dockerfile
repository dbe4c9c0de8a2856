# python:3.11-slim-bookworm, built locally from debian:bookworm-slim (docker/base-images.sh)
# where no registry can be reached. Debian's python3 is 3.11; `python3 -m venv` works as
# in the official image.
FROM debian:bookworm-slim
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
RUN --mount=type=secret,id=ca \
    echo "deb $DEBIAN_MIRROR bookworm main" >/etc/apt/sources.list \
    && ca=; [ -s /run/secrets/ca ] && ca="-o Acquire::https::CAInfo=/run/secrets/ca"; \
    apt-get $ca update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get $ca install -y -qq --no-install-recommends \
         python3 python3-venv ca-certificates >/dev/null \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
CMD ["python3"]
