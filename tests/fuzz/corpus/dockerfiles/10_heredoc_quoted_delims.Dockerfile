FROM busybox
COPY <<'E O F' <<"X" /d/
body
E O F
x
X
