FROM busybox
RUN echo \\
RUN echo last \