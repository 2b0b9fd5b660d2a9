FROM busybox
RUN <<EOF
apk add --no-cache curl
echo "$HOME" 'single'
# a comment line stays in the body

EOF
RUN echo after
