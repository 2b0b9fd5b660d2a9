FROM busybox
COPY ["a b.txt", "c.txt", "/dest dir/"]
COPY --chown=1:1 ["x", "/y"]
COPY ["$SRC", "/${DEST}"]
