FROM busybox
COPY app.txt /app.txt
COPY build/extra.txt /extra.txt
COPY . /all/
