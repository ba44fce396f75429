# aimsnap: `make demo` and `make test` work on a fresh machine (Python >= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv deps demo test test-full bench clean

# what the tests and benchmarks run as real peers and clients (Debian packages; as root)
APT_PACKAGES := python3-venv libnbd-bin qemu-utils nbdkit fio rsync iproute2 fuse3 chromium chromium-driver prometheus

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null

demo: venv
	$(BIN)/aimsnap demo

test: venv
	$(BIN)/python -m pytest -q

# every fault campaign at full length (see README, "Tests")
test-full: venv
	AIMSNAP_FULL=1 $(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis aimsnap-demo
