ARG a
ARG b=2 c=3
FROM busybox:${b}
ARG a
ARG =x
ARG d=${a:?required}
