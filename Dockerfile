# The image of berth's deploy daemon, `berth serve` (two stages: build with Rust, run on Debian slim).
#
#   docker build -t berth .
#   docker run -d --name berth --stop-timeout 150 -p 127.0.0.1:7420:7420 \
#     -v berth-data:/var/lib/berth -v /srv/berth/berth.yml:/etc/berth/berth.yml:ro berth
#   docker exec berth berth token create --scope deploy --config /etc/berth/berth.yml
#
# This Dockerfile cannot be built on berth's test machines: they reach no registry, so no base image can be
# pulled there. Nothing in the repository builds it (the tests build tests/app/Dockerfile, and the proxy
# image berth puts on hosts is made from the running berth binary, see src/engine/proxy_image.rs).

# --- build ---------------------------------------------------------------------------------------------------
# Any Rust at least Cargo.toml's rust-version; on bookworm, as the runtime stage, so the binary finds the
# glibc it was linked against.
FROM rust:1-bookworm AS build
WORKDIR /src
# The dependencies first, in their own layer: changing berth's code does not download them again.
COPY Cargo.toml Cargo.lock ./
RUN cargo fetch --locked
# What the binary is compiled from: the code and the SQL migrations it embeds.
COPY src src
COPY migrations migrations
RUN cargo build --release --locked --offline --bin berth

# --- run -----------------------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# git fetches the services' repositories (git@… URLs through OpenSSH's ssh, https through the CA bundle).
# Hosts are reached over berth's own SSH client, which needs no ssh binary; openssh-client is for git and for
# `ssh.proxy_command`.
# No Docker: the daemon needs a local `docker` only to build images on this machine. Deploys that name a
# `version` (already in the registry) or whose deploy.yml sets `builder.remote` (berth streams the build to
# that builder over its own SSH connection) need none. To build here, extend this image with Docker's CLI and
# its buildx plugin and mount a Docker socket, knowing that the socket gives root on the machine it belongs to.
# Versions are bookworm's current ones (pinning them would break the build at each Debian security update).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git openssh-client \
    && rm -rf /var/lib/apt/lists/*

# A user of its own; its home holds the data, and ~/.ssh: the key it deploys with and the hosts' known_hosts
# (host keys are verified and the daemon never records new ones). A fixed uid/gid, named numerically in USER,
# so that runtimes checking for a non-root user (Kubernetes' runAsNonRoot) can tell, and volumes can be chowned.
RUN groupadd --system --gid 10001 berth \
    && useradd --system --uid 10001 --gid berth --home-dir /var/lib/berth --create-home \
        --shell /usr/sbin/nologin berth
COPY --from=build /src/target/release/berth /usr/local/bin/berth

# A configuration to start with: every interface (published or not is `docker run -p`'s choice), the data in
# the home directory (mount a volume there to keep it), no services. Mount your own over it.
RUN mkdir -p /etc/berth \
    && printf '%s\n' \
        '# Mount your own berth.yml here (see config/berth.yml in berth'"'"'s repository for every key).' \
        'listen: 0.0.0.0:7420' \
        'data_dir: /var/lib/berth' \
        'services:' \
        > /etc/berth/berth.yml

USER 10001:10001
ENV HOME=/var/lib/berth
WORKDIR /var/lib/berth
EXPOSE 7420
# On SIGTERM the daemon starts no new deploy, stops running ones at a safe point, rolls them back and waits up
# to 120 s for them: give `docker stop` longer than that (`--stop-timeout 150` above; Docker's default is 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["berth"]
CMD ["serve", "--config", "/etc/berth/berth.yml"]
