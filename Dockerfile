# keyless container image: docs/deploy.md tells how to build and run it.
#
# Build stage. Its build command is exactly the one .ci/run runs, on the same Debian 12
# (bookworm), Rust 1.95, gcc and glibc 2.36 as CI's machines, so a green CI proves this step
# (tests/docker/check.py holds the two to each other). aws-lc-rs builds C with the gcc this
# image has; no OpenSSL is needed. The cache mount only keeps crates.io downloads between
# builds; it does not change what is built.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry cargo build --release --locked

# Runtime stage: distroless cc, Debian 12. It holds what the binary links (glibc, libgcc_s)
# and CA certificates, and nothing else: no shell, no package manager. The build stage's
# glibc is the same 2.36, so the binary runs here unchanged; a static (musl) build on
# distroless/static would be smaller still but would not be the build CI runs. keyless
# writes nothing to disk, so the container runs with a read-only root filesystem.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/keyless /usr/local/bin/keyless
# The image's `nonroot` user, by number, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8787
ENTRYPOINT ["/usr/local/bin/keyless"]
# In a container keyless must listen on all interfaces (its default is 127.0.0.1), and a
# listener that is not loopback needs app keys ([[apps]] in --config) or an explicit
# --allow-unauthenticated. The default command has neither on purpose: run bare, the image
# refuses to start and says why, rather than serve the identity to whatever reaches the
# port (`docker run -p 8787:8787` publishes it on every host interface). Say what guards it:
#   docker run -p 127.0.0.1:8787:8787 IMAGE serve --listen 0.0.0.0:8787 --allow-unauthenticated
#   docker run -v ./keyless.toml:/etc/keyless.toml:ro -p 8787:8787 IMAGE serve --listen 0.0.0.0:8787 --config /etc/keyless.toml
# (docs/deploy.md). The Helm chart passes its own arguments.
CMD ["serve", "--listen", "0.0.0.0:8787"]
