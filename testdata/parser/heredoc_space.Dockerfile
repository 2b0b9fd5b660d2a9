FROM busybox
RUN cat << EOF > /f
spaced delimiter (BuildKit >= 0.22)
EOF
COPY << EOF /g
also for COPY
EOF
