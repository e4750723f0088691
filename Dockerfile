# The sidekick container ("Docker sidekick"): one statically linked binary on an empty base.
# Two ways to build the same image:
#
#   docker build -t sidekick .   # this file: compiles in a rust:1-bookworm stage (pulls that image)
#   scripts/image [TAG]          # no pull: compiles on this machine (cargo profile "image"), then
#                                # builds Dockerfile.prebuilt around the binary; default sidekick:latest
#
# It drives the host's systemd over the host's system bus, so run it on the host network with the
# bus directory, the machine id, its configuration and its state directory bound in:
#
#   docker run -d --name sidekick-web-1 --network host \
#     -v /run/dbus:/run/dbus \
#     -v /etc/machine-id:/etc/machine-id:ro \
#     -v /etc/sidekick:/etc/sidekick:ro \
#     -v /var/lib/sidekick:/var/lib/sidekick \
#     -e COREOS_PUBLIC_IPV4 \
#     sidekick:latest run --unit web@1.service
#
# To apply updates it also needs the app unit's drop-in directory, at the same path as on the host
# (swap.dropin_dir; -v /etc/systemd/system:/etc/systemd/system). The pre-pull runs on the host as a
# transient unit of the host's systemd, so no Docker socket is needed. There are no CA roots in the image: http:// needs
# none; for https:// bind the host's in (-v /etc/ssl/certs:/etc/ssl/certs:ro) or set ca_file.
# Host names resolve through the /etc/hosts and /etc/resolv.conf Docker provides (glibc's built-in
# files and dns lookups; other NSS modules, e.g. LDAP or mDNS, are not in the image).

# Build stage: a static binary (glibc's static libs; only the target's flags, so build scripts and
# proc macros stay dynamic), as scripts/image builds it. protoc builds etcd-client's protocol.
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY examples/releases.toml examples/releases.toml
RUN CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile image --target x86_64-unknown-linux-gnu --bin sidekick \
    && cp target/x86_64-unknown-linux-gnu/image/sidekick /sidekick

# The image: the binary alone (the same as Dockerfile.prebuilt).
FROM scratch
COPY --from=build /sidekick /usr/bin/sidekick
ENV DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/sidekick"]
CMD ["run"]
