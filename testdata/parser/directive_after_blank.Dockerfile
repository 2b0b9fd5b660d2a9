
# escape=`
FROM busybox
RUN echo backslash-continues \
    here
