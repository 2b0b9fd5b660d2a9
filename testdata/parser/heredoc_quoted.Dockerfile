FROM busybox
COPY <<"EOF" /no-expand-double
$HOME stays
EOF
COPY <<'EOF' /no-expand-single
${VAR:-x}
EOF
COPY <<E"O"F /partly-quoted
x
EOF
COPY <<EOF /expand
$HOME
EOF
