FROM busybox
RUN ["sh", "-c", "<<EOF"]
EOF
CMD <<EOF
not a heredoc for CMD
EOF
