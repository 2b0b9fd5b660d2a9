FROM busybox AS build
RUN echo built > /out
FROM build AS test
RUN test -f /out
FROM busybox
COPY --from=build /out /a
COPY --from=1 /out /b
COPY --from=alpine:3.19 /etc/os-release /c
