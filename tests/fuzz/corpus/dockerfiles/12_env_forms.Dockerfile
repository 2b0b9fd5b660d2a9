FROM busybox
ENV a=1 b="two words" c='$a' d=${a:-x}
ENV legacy form value
ENV e=
ENV =bad
LABEL "k k"="v v" x=y
