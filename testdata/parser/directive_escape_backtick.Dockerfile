# escape=`

FROM busybox
COPY testfile.txt c:\
RUN dir c:\ `
    && echo done
RUN echo "keep \ backslash" `
    `
    # comment inside continuation
    && echo next
ENV A=x`  B=y
