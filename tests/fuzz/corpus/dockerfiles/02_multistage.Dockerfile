ARG BASE=busybox
FROM ${BASE} AS build
RUN echo hi > /x
FROM build AS final
COPY --from=build /x /y
COPY --from=0 /x /z
