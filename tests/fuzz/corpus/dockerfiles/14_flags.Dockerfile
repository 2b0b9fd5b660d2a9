FROM --platform=linux/amd64 busybox AS b
COPY --chown=1:1 --chmod=755 --link --parents --exclude=*.md a /b/
ADD --checksum=sha256:00 --keep-git-dir http://x/y /z
RUN --mount=type=cache,target=/c --network=none --security=insecure true
RUN --unknown=1 true
