# Global ARGs may come before the first FROM and parameterise it.
ARG BASE_IMAGE=busybox
ARG TAG
ARG REGISTRY=localhost:5000 VARIANT="musl libc"
FROM ${REGISTRY}/${BASE_IMAGE}:${TAG:-latest}
ARG TAG
RUN echo $TAG
