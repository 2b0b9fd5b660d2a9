# make demo  - set everything up, import busybox, build the demo image (testdata/demo) and run it
# make test  - set everything up, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEBS := busybox-static skopeo umoci zstd docker-registry buildah crun uidmap python3 passwd util-linux libseccomp2 gcc libc6-dev
DEMO_ROOTFS := testdata/out/busybox-rootfs.tar

.PHONY: deps venv demo test clean

deps:
	@scripts/ensure-debs.sh $(DEBS)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: deps venv
	$(PY) testdata/make_busybox_rootfs.py $(DEMO_ROOTFS)
	$(VENV)/bin/pybuild import $(DEMO_ROOTFS) busybox:latest
	$(VENV)/bin/pybuild build --progress plain -t pybuild-demo testdata/demo
	$(VENV)/bin/pybuild run pybuild-demo
	$(VENV)/bin/pybuild images

test: deps venv
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) testdata/out .pytest_cache *.egg-info
