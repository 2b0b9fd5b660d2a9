FROM python:3.11
RUN <<EOT
#!/usr/bin/env python3
print("hello from python")
EOT
RUN python3 <<'PY'
import sys; print(sys.version)
PY
