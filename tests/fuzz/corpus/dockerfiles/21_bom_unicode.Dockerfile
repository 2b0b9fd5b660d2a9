FROM busybox
LABEL 안녕="세계" emoji=😀
RUN echo é x y
