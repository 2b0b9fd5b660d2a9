#!/bin/sh
echo "hello from the pybuild demo image"
cat /app/built.txt
