# Stand-in for eclipse-mosquitto:2 where no registry is reachable (build-local.sh builds it
# from a Debian base): Debian's mosquitto 2 and mosquitto-clients, and the official
# image's `mosquitto` user and group (uid/gid 1883), which the broker drops to and which
# owns the password file, ACL and persistence that `sled.demo.compose_auth` writes.
ARG BASE=sled-base:bookworm-amd64
FROM ${BASE}
RUN groupadd --system --gid 1883 mosquitto \
    && useradd --system --uid 1883 --gid 1883 --home-dir /var/lib/mosquitto \
        --shell /usr/sbin/nologin mosquitto \
    && apt-get update -q \
    && apt-get install -y -q --no-install-recommends mosquitto mosquitto-clients \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
    && chown -R 1883:1883 /mosquitto \
    && test "$(id -u mosquitto):$(id -g mosquitto)" = "1883:1883"
EXPOSE 1883
CMD ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
