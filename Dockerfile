# The sidekick container ("Docker sidekick"): one statically linked binary on an empty base, so the
# image builds on a machine that can pull nothing. Build it with
#
#   scripts/image [TAG]        # static binary (cargo profile "image"), then docker build; default sidekick:latest
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
FROM scratch
COPY target/image/x86_64-unknown-linux-gnu/image/sidekick /usr/bin/sidekick
ENV DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/sidekick"]
CMD ["run"]
