ARG a=1
FROM busybox
ARG a
ENV b=${a:+${a}-${c:-"d e"}} f=${b#*-} g=${b%%-*} h=${b/1/2} i=${b//1/3}
