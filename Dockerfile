# sidekick as a container, for hosts that run their sidekicks under Docker rather than as
# systemd units. It still drives the host's systemd over D-Bus, so run it with the host's system
# bus, machine id and unit directory bound in, and on the host network:
#
#   docker run -d --name sidekick-web-1 --network host \
#     -v /run/dbus/system_bus_socket:/run/dbus/system_bus_socket \
#     -v /etc/machine-id:/etc/machine-id:ro \
#     -v /etc/systemd/system:/etc/systemd/system \
#     -v /etc/sidekick:/etc/sidekick:ro \
#     -v /var/lib/sidekick:/var/lib/sidekick \
#     sidekick:latest run --unit web@1.service
#
# Build: docker build -t sidekick:latest .   (needs the rust and debian base images)

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin sidekick

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sidekick /usr/bin/sidekick
ENV DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/sidekick"]
CMD ["run"]
