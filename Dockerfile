# petrel in a container: built in a Rust image, run from a slim Debian one
# as an unprivileged user, with its data in a volume.
#   docker build -t petrel .
#   docker run -p 1883:1883 -v petrel-data:/var/lib/petrel petrel
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin petrel

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/petrel --shell /usr/sbin/nologin petrel \
    && mkdir -p /var/lib/petrel /etc/petrel \
    && chown petrel:petrel /var/lib/petrel
COPY --from=build /src/target/release/petrel /usr/bin/petrel
COPY packaging/petrel.toml /etc/petrel/petrel.toml
USER petrel
VOLUME /var/lib/petrel
EXPOSE 1883
# SIGTERM (docker stop) shuts down gracefully: clients are told, the
# journal is flushed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/petrel", "serve", "--config", "/etc/petrel/petrel.toml"]
