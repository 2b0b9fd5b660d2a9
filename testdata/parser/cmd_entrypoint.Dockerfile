FROM busybox
CMD echo shell form
CMD ["echo", "exec", "form"]
CMD []
ENTRYPOINT ["/bin/sh", "-c"]
ENTRYPOINT exec top -b
ENTRYPOINT []
CMD
