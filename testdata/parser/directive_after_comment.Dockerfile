# A comment ends the directives, so the next line is an ordinary comment.
# escape=`
FROM busybox
RUN echo one \
    two
