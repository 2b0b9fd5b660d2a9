FROM busybox
ARG user1
ARG buildno=1
ARG a=1 b c="quoted value" d=
ARG CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}
ARG e=with\ escaped\ space
