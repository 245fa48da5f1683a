# hostd: build the binaries, then a slim runtime with libvirt client libs,
# nginx (for `nginx -t`/reload of a shared config), genisoimage, and nftables
# (the reconciler installs the guest isolation table in the host's network
# namespace: it runs with network_mode host and CAP_NET_ADMIN).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libvirt-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libvirt0 nginx-light genisoimage nftables qemu-utils ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/hostd /src/target/release/hostctl /usr/local/bin/
ENV HOSTD_LISTEN=0.0.0.0:8000
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/hostd"]
CMD ["all"]
