FROM busybox
RUN --mount=type=cache,target=/var/cache/apk --mount=type=secret,id=token,target=/run/secrets/t \
    --network=none apk add curl
RUN --security=insecure --network=host ["/bin/true"]
RUN --mount="type=bind,source=a b,target=/src" cat /src/x
RUN --network=default -- echo after double dash
