# unknowndirective=value
# escape=`
FROM busybox
RUN echo \
    still backslash
