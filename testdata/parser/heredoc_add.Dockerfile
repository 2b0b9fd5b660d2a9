FROM busybox
ADD --chmod=755 <<EOF /usr/local/bin/hello
#!/bin/sh
echo hello
EOF
ADD local.txt <<inline.txt /dest/
inline
inline.txt
