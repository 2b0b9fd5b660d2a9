FROM busybox AS builder
RUN touch /a
FROM busybox
COPY --from=builder --chown=1000:1000 --chmod=0755 --link /a /b/
COPY --parents --exclude=*.tmp --exclude="dir with space" ./src/**/*.go /app/
COPY --link=false a b
COPY --chown="app user" file /dst
COPY a b c /multi/
