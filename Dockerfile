# syntax=docker/dockerfile:1
# quantd image: build on Debian 12, run on debian:12-slim as a non-root user.
#   docker build -t quantd:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9464:9464 quantd:0.1.0

# ---- builder ---------------------------------------------------------------
FROM debian:12 AS builder
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
# setup.sh installs the Debian packages first, so this layer is cached until
# the script changes; the image needs none of the npm test tools.
COPY scripts/setup.sh scripts/setup.sh
RUN QUANTD_SETUP_TEST_TOOLS=0 scripts/setup.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# RelWithDebInfo, as scripts/build.sh and CI build it, but with warnings as
# warnings (they build with -Werror; a new compiler's warning is not worth a
# failed image).
# Only the three programs, and at most 4 compilers at once: LibTorch units
# take up to ~1 GB each.
RUN rm -rf build && cmake -G Ninja -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUANTD_WERROR=OFF \
    && cmake --build build -j"$(( $(nproc) < 4 ? $(nproc) : 4 ))" --target quantd quantctl quantd-quantize
# Collect the binaries and the Debian packages their shared libraries come from.
RUN set -eu; mkdir -p /out/bin; \
    for b in build/server/quantd build/client/quantctl build/worker/quantd-quantize; do \
      cp "$b" /out/bin/; \
    done; \
    for lib in $(ldd /out/bin/* | awk '/=> \// {print $3}' | sort -u); do \
      dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true; \
    done | cut -d: -f1 | sort -u > /out/runtime-packages.txt; \
    cat /out/runtime-packages.txt

# ---- runtime ---------------------------------------------------------------
FROM debian:12-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
COPY --from=builder /out/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update -q \
    && xargs -a /tmp/runtime-packages.txt apt-get install -y -q --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
    && groupadd --gid 10001 quantd \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/quantd \
         --shell /usr/sbin/nologin quantd \
    && mkdir -p /var/lib/quantd && chown 10001:10001 /var/lib/quantd
COPY --from=builder /out/bin/ /usr/local/bin/
# A library the package list missed fails the build here, not at docker run.
RUN quantd --version && quantctl --version && quantd-quantize --version
USER 10001:10001
ENV OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
VOLUME ["/var/lib/quantd"]
EXPOSE 50051 9464
# Plaintext on 50051, the defaults below: with --tls_cert or another port,
# override it (docker run --health-cmd ...); Kubernetes ignores it.
# A named service: the whole server's check also asks GetServerInfo, which
# needs a token when --token_file is given (each check would be refused).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD ["/usr/local/bin/quantctl", "--server=127.0.0.1:50051", "--timeout_seconds=2", "health", \
       "--service=quantd.v1.QuantizationService"]
ENTRYPOINT ["/usr/local/bin/quantd"]
CMD ["--bind_address=0.0.0.0", "--grpc_port=50051", "--metrics_port=9464", "--data_dir=/var/lib/quantd"]
