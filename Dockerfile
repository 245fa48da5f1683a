# hostd's image: the binaries on a slim Debian runtime with the libvirt client
# library, nginx (for `nginx -t`/reload of the shared config), genisoimage,
# qemu-img and nftables (the reconciler installs the guest isolation table in
# the host's network namespace: it runs with network_mode host and CAP_NET_ADMIN).
#
# BASE: the runtime's base image (the official debian:bookworm-slim; where no
# registry can be reached, scripts/build-container-base.sh makes
# localhost/hostd-base:bookworm from Debian's packages, with the runtime
# packages already in, so nothing is fetched). BUILDER and PREBUILT: by
# default the binaries are compiled in a rust:1-bookworm stage; with
# PREBUILT=<dir of the build context> (scripts/docker-start.sh sets
# target/container, filled from a host build) they are copied instead and
# BUILDER only has to be a Debian image.
ARG BASE=debian:bookworm-slim
ARG BUILDER=rust:1-bookworm
FROM ${BUILDER} AS build
ARG PREBUILT=
WORKDIR /src
COPY . .
RUN set -e; mkdir -p /out; \
    if [ -n "$PREBUILT" ]; then \
      cp "$PREBUILT/hostd" "$PREBUILT/hostctl" /out/; \
    else \
      apt-get update && apt-get install -y --no-install-recommends libvirt-dev pkg-config; \
      cargo build --release --locked --bins; \
      cp target/release/hostd target/release/hostctl /out/; \
    fi

FROM ${BASE}
RUN dpkg-query -W libvirt0 nginx-light genisoimage nftables qemu-utils ca-certificates >/dev/null 2>&1 || \
    (apt-get update && apt-get install -y --no-install-recommends libvirt0 nginx-light genisoimage nftables qemu-utils ca-certificates \
     && rm -rf /var/lib/apt/lists/*)
COPY --from=build /out/hostd /out/hostctl /usr/local/bin/
ENV HOSTD_LISTEN=0.0.0.0:8000
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/hostd"]
CMD ["all"]
