RUN echo before
FROM busybox
