# rootbox — setup, build, image, demo, test, lint, bench.
# Every target installs what it needs (apt packages) itself: run on a fresh Debian bookworm.

SHELL        := /bin/bash
.SHELLFLAGS  := -euo pipefail -c
CARGO        ?= cargo
TARGET       := x86_64-unknown-linux-gnu
BUILD        := $(CURDIR)/build
IMAGE_DIR    := $(BUILD)/worker-image
FIXTURES     := $(BUILD)/fixtures
# cargo's output directory: $CARGO_TARGET_DIR when set, as cargo itself does.
TARGET_DIR   := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
ROOTBOX      := $(TARGET_DIR)/release/rootbox
WORKER_BIN   := $(TARGET_DIR)/$(TARGET)/release/rootbox-worker
FIXTURE_BIN  := $(TARGET_DIR)/release/rootbox-fixture
APT_PACKAGES := e2fsprogs debootstrap busybox-static zstd tar gzip binutils util-linux ca-certificates python3 \
                qemu-system-x86 cpio docker-registry skopeo apache2-utils g++

.PHONY: all setup build worker worker-image vm-image image vsock-tool demo test unit lint fmt bench \
        bench-pull clean fuzz-tool fuzz-build fuzz-seeds fuzz fuzz-smoke

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

## worker-image: the worker image's container root under build/worker-image (the static
## worker + e2fsprogs from Debian's packages): all the container sandbox needs. When the
## image already has an initramfs (`make image` ran), it is repacked from the new root, so
## the microVM never boots an older worker than the container runs.
worker-image: setup worker
	DEB_CACHE=$(BUILD)/debs images/build-worker-image.sh $(IMAGE_DIR) $(WORKER_BIN)
	if [ -f $(IMAGE_DIR)/initramfs.cpio.gz ]; then \
	  images/build-initramfs.sh $(IMAGE_DIR)/rootfs $(IMAGE_DIR)/initramfs.cpio.gz; fi

## vm-image: what the microVM sandbox boots, added to the worker image: the worker kernel
## (built once from Debian's linux-source, then cached: the slow step of `make image`) and
## the container root packed as an initramfs; and QEMU's vsock backend.
vm-image: worker-image vsock-tool
	images/kernel/build.sh $(BUILD)/kernel
	install -m 0644 $(BUILD)/kernel/current/vmlinux $(BUILD)/kernel/current/bzImage $(IMAGE_DIR)/
	if [ ! -f $(IMAGE_DIR)/initramfs.cpio.gz ]; then \
	  images/build-initramfs.sh $(IMAGE_DIR)/rootfs $(IMAGE_DIR)/initramfs.cpio.gz; fi

## image: the whole worker image: the container root and what the microVM boots.
image: worker-image vm-image

## vsock-tool: vhost-device-vsock (crates.io), the vsock backend of the QEMU sandbox when the
## host has no /dev/vhost-vsock; installed into cargo's bin directory unless it already runs.
vsock-tool:
	@if vhost-device-vsock --version >/dev/null 2>&1 || \
	  "$${CARGO_HOME:-$$HOME/.cargo}/bin/vhost-device-vsock" --version >/dev/null 2>&1; then :; else \
	  echo "vsock-tool: cargo install --locked vhost-device-vsock"; \
	  $(CARGO) install --locked vhost-device-vsock --version '~0.3'; \
	fi

## demo: build what the demo runs (the host CLI, the static worker, the worker image's
## container root; not the microVM kernel), make a two-layer busybox OCI image, pull it into
## demo.ext4 with `--isolation auto` (which says on stderr which sandbox it chose and why).
demo: setup build worker-image
	$(FIXTURE_BIN) demo $(BUILD)/demo-oci
	$(ROOTBOX) pull oci:$(BUILD)/demo-oci:demo -o $(CURDIR)/demo.ext4 --worker-image $(IMAGE_DIR) --progress
	@echo "demo: built $(CURDIR)/demo.ext4; next: inspect it (debugfs -R 'ls -l /' demo.ext4), try a registry image ($(ROOTBOX) pull debian:bookworm -o debian.ext4), or run the tests (make test: also builds the microVM kernel, once)"

## test: unit tests, then end-to-end and hostile-input tests as root (ROOTBOX_STRICT=1:
## a missing capability fails instead of skipping). PROPTEST_CASES: archives per property of
## the tar differential test (tar/tests/differential.rs).
## Then every fuzz target for FUZZ_SMOKE_SECONDS (fuzz-smoke).
PROPTEST_CASES ?= 1000
test: setup build image vsock-tool fuzz-tool
	tests/fixtures/debian-minbase.sh $(FIXTURES)
	ROOTBOX_STRICT=1 ROOTBOX_BIN=$(ROOTBOX) ROOTBOX_WORKER_IMAGE=$(IMAGE_DIR) PROPTEST_CASES=$(PROPTEST_CASES) \
	  $(CARGO) test --release --locked --workspace -- --test-threads=2
	$(MAKE) --no-print-directory fuzz-smoke

unit:
	$(CARGO) test --locked --workspace --lib --bins

## fuzz-tool: cargo-fuzz (crates.io), which builds the fuzz targets with libFuzzer and the
## sanitizer; installed into cargo's bin directory unless it already runs.
fuzz-tool:
	@if $(CARGO) fuzz --version >/dev/null 2>&1; then :; else \
	  echo "fuzz-tool: cargo install --locked cargo-fuzz"; \
	  $(CARGO) install --locked cargo-fuzz --version '~0.13'; \
	fi

## fuzz: every fuzz target of fuzz/ (frames: the wire frame decoder; tar: the tar reader; apply:
## the layer applier, unprivileged into a temp dir; ext4: rootbox diff's reader and the
## canonicalising pass on patched images) for FUZZ_SECONDS each, from the corpus kept
## in build/fuzz/corpus and seeds made from the hostile tests (fuzz-seeds). A crash, timeout
## (FUZZ_TIMEOUT s for one input) or running out of FUZZ_RSS_MB fails the run and leaves the
## input in build/fuzz/artifacts/TARGET/; reproduce with `cargo +nightly fuzz run TARGET FILE`.
## fuzz-smoke: the same, FUZZ_SMOKE_SECONDS each (make test runs it).
FUZZ_TARGETS       ?= frames tar apply ext4
FUZZ_SECONDS       ?= 600
FUZZ_SMOKE_SECONDS ?= 60
FUZZ_TIMEOUT       ?= 10
FUZZ_RSS_MB        ?= 2048
FUZZ_DIR           := $(BUILD)/fuzz
# The apply target makes and removes a temp dir per input: on tmpfs it runs about 12 times
# as many inputs as on the disk.
FUZZ_TMPDIR        ?= $(if $(wildcard /dev/shm),/dev/shm,/tmp)
# cargo fuzz needs nightly flags (the sanitizer, coverage passes): the nightly toolchain when
# rustup has one, else this stable one allowed them (a machine without nightly cannot fetch it).
FUZZ_CARGO         ?= $(shell rustup run nightly rustc --version >/dev/null 2>&1 && \
                        echo '$(CARGO) +nightly' || echo 'RUSTC_BOOTSTRAP=1 $(CARGO)')
fuzz_seeds_frames  := frames
fuzz_seeds_tar     := tar layers
fuzz_seeds_apply   := layers tar
fuzz_dict_frames   := frames
fuzz_dict_tar      := tar
fuzz_dict_apply    := tar
fuzz_dict_ext4     := ext4

fuzz-build: fuzz-tool
	$(CARGO) metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
	$(FUZZ_CARGO) fuzz build --debug-assertions

# --workspace: the features make test's build unified, so the tests it built are reused.
fuzz-seeds:
	ROOTBOX_FUZZ_SEEDS=$(FUZZ_DIR)/seeds \
	  $(CARGO) test --release --locked --workspace --test fuzz_seeds -- --ignored

fuzz: FUZZ_RUN_SECONDS = $(FUZZ_SECONDS)
fuzz-smoke: FUZZ_RUN_SECONDS = $(FUZZ_SMOKE_SECONDS)
fuzz fuzz-smoke: $(addprefix fuzz-run-,$(FUZZ_TARGETS))

# libFuzzer's output goes to build/fuzz/logs/TARGET.log; its final stats are shown, and on a
# failure the report too.
fuzz-run-%: fuzz-build fuzz-seeds
	@mkdir -p $(FUZZ_DIR)/corpus/$* $(FUZZ_DIR)/artifacts/$* $(FUZZ_DIR)/logs
	@echo "fuzz: $* for $(FUZZ_RUN_SECONDS) s (log: $(FUZZ_DIR)/logs/$*.log)"
	@TMPDIR=$(FUZZ_TMPDIR) $(FUZZ_CARGO) fuzz run --debug-assertions $* $(FUZZ_DIR)/corpus/$* \
	    $(addprefix $(FUZZ_DIR)/seeds/,$(fuzz_seeds_$*)) -- \
	  -max_total_time=$(FUZZ_RUN_SECONDS) -timeout=$(FUZZ_TIMEOUT) -rss_limit_mb=$(FUZZ_RSS_MB) \
	  -dict=fuzz/dict/$(fuzz_dict_$*).dict -artifact_prefix=$(FUZZ_DIR)/artifacts/$*/ \
	  -print_final_stats=1 -print_funcs=0 >$(FUZZ_DIR)/logs/$*.log 2>&1 \
	  || { tail -n 80 $(FUZZ_DIR)/logs/$*.log >&2; \
	       echo "fuzz: $* failed; its input is in $(FUZZ_DIR)/artifacts/$*/" >&2; exit 1; }
	@grep -E '^#[0-9]+[[:space:]]+DONE|^stat::' $(FUZZ_DIR)/logs/$*.log

lint:
	$(CARGO) fmt --all --check
	python3 scripts/host-imports.py
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --check
	$(CARGO) clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml

clean:
	rm -rf $(BUILD) demo.ext4
	$(CARGO) clean

## bench: rootbox against the predecessor's pipeline, virt-make-fs and this machine's limit
## (tests/bench/README.md). BENCH_RUNS (5), BENCH_INPUTS (debian,small20k,small200k,large),
## BENCH_CONTENDERS, BENCH_TCG_RUNS, BENCH_TCG_INPUTS; results under build/bench.
BENCH_APT := libguestfs-tools isal pigz gnuplot-nox python3 e2fsprogs util-linux tar gzip zstd
bench: build image
	@missing=$$(for p in $(BENCH_APT); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "bench: installing $$missing"; \
	  apt-get update -qq || true; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing; \
	fi
	tests/fixtures/debian-minbase.sh $(FIXTURES)
	ROOTBOX=$(ROOTBOX) ROOTBOX_WORKER_IMAGE=$(IMAGE_DIR) BENCH_OUT=$(BUILD)/bench \
	  python3 tests/bench/bench.py
	$(MAKE) --no-print-directory bench-pull

## bench-pull: a registry pull streamed into the build vs downloaded first, through a loopback
## link limited so the download takes about as long as the build (tests/bench/README.md).
## PULL_BENCH_LAYERS (8), PULL_BENCH_RUNS (3), PULL_BENCH_ISOLATION (container), PULL_BENCH_COMPRESSION (gzip).
PULL_BENCH := $(CURDIR)/target/release/rootbox-pull-bench
bench-pull: setup build image
	ROOTBOX_BIN=$(ROOTBOX) ROOTBOX_WORKER_IMAGE=$(IMAGE_DIR) \
	  $(PULL_BENCH) $${PULL_BENCH_LAYERS:-8} $${PULL_BENCH_RUNS:-3} $${PULL_BENCH_ISOLATION:-container} $${PULL_BENCH_COMPRESSION:-gzip}
