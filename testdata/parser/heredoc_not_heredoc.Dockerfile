FROM busybox
RUN ["cat", "<<EOF"]
RUN echo "<<EOF" '<<EOF' a<<b
ENV A=<<EOF
LABEL x=<<EOF
