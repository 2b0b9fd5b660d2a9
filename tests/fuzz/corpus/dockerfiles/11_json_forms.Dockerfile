FROM busybox
CMD ["sh", "-c", "echo $HOME"]
ENTRYPOINT ["a",]
RUN ["unterminated
SHELL ["/bin/sh", "-c"]
VOLUME ["/a", "/b"]
