FROM busybox
RUN cat <<EOF > /etc/motd
welcome
EOF
RUN 3<<FD cat /dev/fd/3
fd three
FD
RUN cat <<EOF>/file-no-space
quirk: the delimiter is EOF>/file-no-space
EOF>/file-no-space
