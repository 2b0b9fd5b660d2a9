FROM busybox
ONBUILD RUN <<EOF
echo triggered
EOF
ONBUILD COPY <<-'CFG' /etc/app.cfg
	key=value
	CFG
