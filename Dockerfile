# tokenctl's container images, built by the release workflow for
# linux/amd64 and linux/arm64:
#
#   runtime (the default): distroless static, a non-root user, and the
#           static binary alone (rustls: no OpenSSL, no libc).
#   debug:  the same on distroless's :debug variant, which adds a busybox
#           shell, for CI jobs that need `sh` in their image (GitLab runs
#           a job's script with the image's entrypoint, here busybox sh;
#           tokenctl is on PATH).
#
#   docker build -t tokenctl .
#   docker build --target debug -t tokenctl:debug .

# Alpine's Rust (with gcc and musl-dev, for ring) builds for musl
# natively: the binary is static.
FROM rust:1-alpine3.22 AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY tokenctl.schema.json ./
RUN cargo build --release --locked \
    && cp target/release/tokenctl /tokenctl \
    && /tokenctl --version

FROM gcr.io/distroless/static-debian12:debug-nonroot AS debug
COPY --from=build /tokenctl /usr/local/bin/tokenctl
# distroless's nonroot user.
USER 65532:65532
WORKDIR /work

# Last, so that a plain `docker build` makes this one.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
COPY --from=build /tokenctl /usr/local/bin/tokenctl
USER 65532:65532
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/tokenctl"]
