FROM busybox
RUN echo hello world
RUN ["echo", "exec", "form"]
RUN   ["/bin/sh", "-c", "echo $HOME"]
RUN echo "quoted 'mixed'" && echo 'single "x"'
RUN set -e; for i in 1 2; do echo $i; done
