FROM busybox
RUN echo last line continues \
