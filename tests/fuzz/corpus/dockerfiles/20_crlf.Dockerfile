FROM busybox
RUN echo crlf \
  more
COPY a b
