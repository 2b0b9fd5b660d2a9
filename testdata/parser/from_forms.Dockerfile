FROM busybox
FROM busybox:1.36 AS Builder
from --platform=linux/arm64 alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef as base-2.x
FROM scratch
FROM localhost:5000/team/app:v1   AS   final_stage
