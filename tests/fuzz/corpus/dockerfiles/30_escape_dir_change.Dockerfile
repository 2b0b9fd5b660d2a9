# escape=`
FROM busybox
RUN echo \
COPY a\b `
 c
# escape=\
RUN x
