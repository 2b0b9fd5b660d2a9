FROM busybox
ONBUILD ADD . /app/src
ONBUILD RUN /usr/local/bin/python-build --dir /app/src
onbuild copy --from=builder --chown=1:1 /x /y
ONBUILD ENV A=1 B="two words"
ONBUILD HEALTHCHECK CMD true
