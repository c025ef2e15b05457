# rootbox — setup, build, image, demo, test, lint, bench.
# Every target installs what it needs (apt packages) itself: run on a fresh Debian bookworm.

SHELL        := /bin/bash
.SHELLFLAGS  := -euo pipefail -c
CARGO        ?= cargo
TARGET       := x86_64-unknown-linux-gnu
BUILD        := $(CURDIR)/build
IMAGE_DIR    := $(BUILD)/worker-image
FIXTURES     := $(BUILD)/fixtures
ROOTBOX      := $(CURDIR)/target/release/rootbox
WORKER_BIN   := $(CURDIR)/target/$(TARGET)/release/rootbox-worker
FIXTURE_BIN  := $(CURDIR)/target/release/rootbox-fixture
APT_PACKAGES := e2fsprogs debootstrap busybox-static zstd tar gzip binutils util-linux ca-certificates

.PHONY: all setup build worker image demo test unit lint fmt bench clean

all: build image

## setup: install the Debian packages the build, demo and tests use (idempotent).
setup:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "setup: installing $$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "setup: need root to apt-get install $$missing" >&2; exit 1; fi; \
	  apt-get update -qq || true; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing; \
	fi
	@rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt || true

## build: the host CLI and the fixture tool (release), and the static worker.
build: worker
	$(CARGO) build --release --locked -p rootbox -p rootbox-tests --bins

worker:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked -p rootbox-worker --target $(TARGET)

## image: the worker image (static worker + e2fsprogs from Debian's packages).
image: setup worker
	DEB_CACHE=$(BUILD)/debs images/build-worker-image.sh $(IMAGE_DIR) $(WORKER_BIN)

## demo: build everything, make a two-layer busybox OCI image, pull it into demo.ext4.
demo: setup build image
	$(FIXTURE_BIN) demo $(BUILD)/demo-oci
	$(ROOTBOX) pull oci:$(BUILD)/demo-oci:demo -o $(CURDIR)/demo.ext4 --worker-image $(IMAGE_DIR) --progress
	@echo "demo: $(CURDIR)/demo.ext4 built; inspect with: e2fsck -fn demo.ext4; debugfs -R 'ls -l /' demo.ext4"

## test: unit tests, then end-to-end and hostile-input tests as root (ROOTBOX_STRICT=1:
## a missing capability fails instead of skipping).
test: setup build image
	tests/fixtures/debian-minbase.sh $(FIXTURES)
	ROOTBOX_STRICT=1 ROOTBOX_BIN=$(ROOTBOX) ROOTBOX_WORKER_IMAGE=$(IMAGE_DIR) \
	  $(CARGO) test --release --locked --workspace -- --test-threads=2

unit:
	$(CARGO) test --locked --workspace --lib --bins

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	rm -rf $(BUILD) demo.ext4
	$(CARGO) clean
