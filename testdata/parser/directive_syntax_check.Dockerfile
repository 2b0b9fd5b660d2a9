# syntax=docker/dockerfile:1.7
# check=skip=JSONArgsRecommended;error=true
#escape=\
FROM busybox
RUN echo a \
    b
