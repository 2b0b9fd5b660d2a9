# escape=`
FROM busybox
RUN echo a `
    b `
    c
COPY a` b /dst/
