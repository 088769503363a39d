# kvmig front door. Everything real happens in Meson; this file only names
# the jobs. Each target first makes sure the build dependencies are there.

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
SOAK_ROUNDS ?= 100
# CI builds treat every warning as an error (.ci/run sets WERROR=1).
WERROR     ?= 0
MESON_WERROR := $(if $(filter 1,$(WERROR)),--werror,)

.PHONY: all deps demo check faults bench bench-compare bench-caps bench-mapped bench-tls fuzz clean format

all: $(BUILD)/build.ninja
	ninja -C $(BUILD)

deps:
	@scripts/deps.sh

$(BUILD)/build.ninja: | deps
	meson setup $(MESON_WERROR) $(BUILD) >/dev/null

$(ASAN_BUILD)/build.ninja: | deps
	meson setup $(MESON_WERROR) $(ASAN_BUILD) -Db_sanitize=address,undefined \
		-Db_lundef=false -Dintegration=false >/dev/null

$(FUZZ_BUILD)/build.ninja: | deps
	CC=clang meson setup $(FUZZ_BUILD) -Dfuzz=true -Dtests=false \
		-Db_lundef=false >/dev/null

demo: all
	scripts/demo.sh $(BUILD)

check: $(BUILD)/build.ninja $(ASAN_BUILD)/build.ninja
	ninja -C $(BUILD) >/dev/null
	ninja -C $(ASAN_BUILD) >/dev/null
	scripts/check.sh $(BUILD) $(ASAN_BUILD)

# The whole fault suite (tests/faults/): every case, its results in
# tests/faults/results.json, the table in docs/RELIABILITY.md.
FAULTS_ONLY ?= .
faults: all
	python3 tests/faults/run_faults.py $(BUILD)/src/cli/kvmig \
		$(BUILD)/guest/guest.elf --only '$(FAULTS_ONLY)' \
		--label "$$(git describe --always --dirty) ($$(git rev-parse \
		--abbrev-ref HEAD))" --results tests/faults/results.json \
		$(if $(filter .,$(FAULTS_ONLY)),,--update); \
		rc=$$?; \
	python3 tests/faults/render.py tests/faults/results.json \
		docs/RELIABILITY.md; exit $$rc

bench: all
	bench/run.sh $(BUILD)

bench-compare: all
	bench/compare.sh $(BUILD)

bench-caps: all
	bench/caps.sh $(BUILD)

# Suspend and resume through a mapped-ram file against the disk's own
# speed and QEMU 7.2 (root: it drops the page cache); bench/mapped.py.
bench-mapped: all
	python3 bench/mapped.py $(BUILD) --rounds $(or $(ROUNDS),3)

# Issue 12's TLS benchmarks: bench/results/tls-latest.md.
bench-tls: all
	bench/tls.sh $(BUILD)

# Postcopy against QEMU 7.2's (issue 11): bench/postcopy.sh, the report
# in bench/results/postcopy-latest.md.
.PHONY: bench-postcopy
bench-postcopy: all
	bench/postcopy.sh $(BUILD)

# SOAK_ROUNDS migrations of one guest per mode (multifd off, on), and the
# long-lived processes (tests/soak/soak.py); the report goes to
# bench/results/soak-latest.md.
.PHONY: soak
soak: all
	tests/soak/soak.py $(BUILD)/src/cli/kvmig $(BUILD)/guest/guest.elf \
		--rounds $(SOAK_ROUNDS) --out bench/results/soak-latest.md

fuzz: $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)
	scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
