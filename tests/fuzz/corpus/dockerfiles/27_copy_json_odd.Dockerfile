FROM busybox
COPY ["a b", "c\"d", "/dst/"]
COPY [ "x" ]
ADD [] /
