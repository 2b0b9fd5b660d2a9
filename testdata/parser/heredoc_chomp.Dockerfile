FROM busybox
RUN <<-EOF
	echo tabbed
		echo two tabs
    spaces stay
	EOF
COPY <<-EOF /x
	line
	EOF
