FROM busybox
SHELL ["/bin/sh", "-ec"]
RUN echo uses the new shell
SHELL ["powershell", "-command"]
