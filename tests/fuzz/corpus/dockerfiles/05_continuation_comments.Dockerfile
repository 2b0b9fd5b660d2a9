FROM busybox
RUN echo a \
# comment inside

    && echo b \
  \
    && echo c
