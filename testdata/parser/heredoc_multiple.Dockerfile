FROM busybox
COPY <<file1 <<file2 /dest/
first file
file1
second file
file2
COPY <<X <<Y /swap
Y
X
X
Y
RUN <<A cat /dev/stdin && cat <<B
from A
A
from B
B
