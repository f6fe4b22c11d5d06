# syntax=docker/dockerfile:1
# mailgate: a static binary on a distroless base, running as a non-root user.
#   docker build -t mailgate .
#   docker run -v ./mailgate.yaml:/etc/mailgate/mailgate.yaml -p 995:995 -p 993:993 mailgate
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The same command deploy/build_test.go runs: a static, stripped, reproducible binary.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mailgate ./cmd/mailgate
# The state directory (ACME storage), made here because distroless has no shell: copied
# below with the runtime user as owner, so a named volume mounted on it starts out
# writable by that user (Docker copies the image's directory, owner and mode, into an
# empty volume).
RUN mkdir -p /out/state && chmod 0700 /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mailgate /usr/local/bin/mailgate
COPY --from=build --chown=65532:65532 /out/state /var/lib/mailgate
# 110/143: STLS/STARTTLS, 995/993: implicit TLS, 9110: metrics and health.
EXPOSE 110 143 993 995 9110
VOLUME ["/etc/mailgate", "/var/lib/mailgate"]
USER nonroot:nonroot
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/mailgate", "healthcheck", "http://127.0.0.1:9110/healthz"]
ENTRYPOINT ["/usr/local/bin/mailgate"]
CMD ["serve", "-config", "/etc/mailgate/mailgate.yaml"]
