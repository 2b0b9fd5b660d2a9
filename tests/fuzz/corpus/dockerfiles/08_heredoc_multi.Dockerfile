FROM busybox
RUN <<A cat - && cat /dev/fd/3 3<<B
from a
A
from b
B
COPY <<-"EOF" /dst
	quoted $x
	EOF
