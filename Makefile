# Two entry points for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.idres-installed
PEOPLE ?= 2000
SIZES ?= 10000,100000,1000000
CLUSTER_CORES ?= 2
CLUSTER_MEMORY ?= 4g

export AIRFLOW_HOME := $(CURDIR)/airflow_home
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__LOGGING__LOGGING_LEVEL := WARNING
export AIRFLOW_CONN_SPARK_DEFAULT ?= {"conn_type": "spark", "host": "local[*]"}
export PYSPARK_PYTHON := $(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(BIN)/python
export IDRES_HOME := $(CURDIR)
export PATH := $(BIN):$(PATH)
# Class-data sharing for Spark drivers: the classes a small pipeline run loads, archived once by `make install`
# and mapped by every driver JVM instead of loaded and verified again (about 4 s of each driver's start; a DAG
# run starts six). spark-submit gives SPARK_SUBMIT_OPTS to the driver JVM only; a JVM ignores a missing
# archive, or one a different JDK or Spark made.
JVM_ARCHIVE := $(VENV)/idres-driver.jsa
CDS_QUIET := -Xlog:cds=off -Xlog:cds+dynamic=off
export SPARK_SUBMIT_OPTS ?= -XX:SharedArchiveFile=$(JVM_ARCHIVE) $(CDS_QUIET)

.PHONY: help install check-java chromium run run-cluster test test-faults lint clean bench-accuracy bench-scale query

help:
	@echo "make run    run the identity_resolution DAG on the demo data and print a summary"
	@echo "make run-cluster   the same on a Spark standalone master + worker started on 127.0.0.1 (stopped after)"
	@echo "make test   run the test suite (all but the heavy tests)"
	@echo "make test-faults   the fault-injection tests and the other heavy ones (the standalone cluster)"
	@echo "make clean   remove the lakehouse, landing, models, reports and Airflow home (before make run with another PEOPLE)"
	@echo "make lint   ruff"
	@echo "make query SQL='SELECT ...' [CSV=out.csv]   SQL (DuckDB) over the Delta tables, shown or written as CSV"
	@echo "make bench-accuracy   FEBRL3/4 and demo accuracy, project vs bare Splink-DuckDB"
	@echo "make bench-scale [SIZES=10000,100000,1000000]   end-to-end time, memory and F1 by size vs bare Splink"

check-java:
	@v=$$( { java -version 2>&1 || true; } | awk -F'"' '/version/ {print $$2; exit}'); \
	major=$${v%%.*}; \
	if [ -z "$$v" ] || [ "$$major" -lt 17 ] 2>/dev/null || [ -z "$$major" ]; then \
	  echo "ERROR: Java 17 or newer is required for Spark (found: $${v:-none}). Install a JDK 17+ and put java on PATH." >&2; \
	  exit 1; \
	fi

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "ERROR: $(PYTHON) not found; Python 3.11 is required." >&2; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned stack into .venv (first time: a few minutes) ..."
	@{ $(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e '.[dev]'; } \
	  >$(VENV)/install.log 2>&1 || { tail -n 40 $(VENV)/install.log; echo "ERROR: install failed; see $(VENV)/install.log" >&2; exit 1; }
	@touch $(STAMP)

# Remade whenever the stack is reinstalled; the run's data goes to a temporary folder. The JVM writes the
# archive as it exits, so it is written under another name and renamed once spark-submit has returned: a
# truncated archive would crash every JVM that maps it.
$(JVM_ARCHIVE): $(STAMP)
	@echo "Archiving the Spark driver's classes from a pipeline run on 40 demo people (about a minute) ..."
	@rm -f $@ $@.part; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp" $@.part' EXIT; \
	IDRES_LAKEHOUSE=$$tmp/lakehouse IDRES_LANDING=$$tmp/landing IDRES_GROUND_TRUTH=$$tmp/truth \
	  IDRES_MODELS=$$tmp/models IDRES_REPORTS=$$tmp/reports \
	  SPARK_SUBMIT_OPTS="-XX:ArchiveClassesAtExit=$@.part $(CDS_QUIET)" \
	  $(BIN)/spark-submit --master 'local[2]' jobs/pipeline.py --demo-people 40 --demo-corrupt \
	  >$(VENV)/jvm-archive.log 2>&1 \
	  || { tail -n 40 $(VENV)/jvm-archive.log; echo "ERROR: the archiving run failed; see $(VENV)/jvm-archive.log" >&2; exit 1; }; \
	if [ -s $@.part ]; then mv $@.part $@; \
	else echo "NOTE: this JVM made no class archive (see $(VENV)/jvm-archive.log); Spark starts without one." >&2; fi

install: check-java $(STAMP) $(JVM_ARCHIVE)

# Headless Chromium renders the auditor report in tests (Debian's package; CI runs as root).
chromium:
	@command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }

run: install
	@$(BIN)/airflow db migrate >/dev/null
	@echo "Running the identity_resolution DAG on $(PEOPLE) demo people (a few minutes; log: $(AIRFLOW_HOME)/last_dag_run.log)"
	@# INFO: a task's own output (a job's log, the reason it failed) reaches Airflow's log at INFO; jobs log no values
	@AIRFLOW__LOGGING__LOGGING_LEVEL=INFO $(BIN)/airflow dags test identity_resolution \
	  -c '{"demo_people": $(PEOPLE)}' >$(AIRFLOW_HOME)/last_dag_run.log 2>&1 \
	  || { tail -n 60 $(AIRFLOW_HOME)/last_dag_run.log; echo "DAG run failed; full log: $(AIRFLOW_HOME)/last_dag_run.log" >&2; exit 1; }
	@$(BIN)/python -m jobs.summary

# `make run` with spark_default pointed at a local standalone cluster; the trap stops it however the run ends.
run-cluster: install
	@trap '$(BIN)/python -m jobs.local_cluster stop --dir $(AIRFLOW_HOME)/cluster' EXIT; trap 'exit 130' INT TERM; \
	cluster_env=$$($(BIN)/python -m jobs.local_cluster start --dir $(AIRFLOW_HOME)/cluster \
	  --cores $(CLUSTER_CORES) --memory $(CLUSTER_MEMORY)); \
	eval "$$cluster_env"; \
	$(MAKE) --no-print-directory run

bench-accuracy: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' >$(VENV)/install-bench.log 2>&1
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/accuracy.py

bench-scale: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' >$(VENV)/install-bench.log 2>&1
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/scale.py --sizes $(SIZES) $(SCALE_ARGS)

# A variable given on make's command line as one shell word, as typed: neither make nor the shell expands a `$`,
# quote or backtick in it (SQL="SELECT ... WHERE city = 'Kyiv'"), and a line break stays one (bash's $'\n').
define NL


endef
quoted = '$(subst $(NL),'$$'\n'',$(subst ','\'',$(value $(1))))'

query: install
	@$(BIN)/python -m jobs.query $(if $(value CSV),--csv $(call quoted,CSV)) $(call quoted,SQL)

test: install chromium
	$(BIN)/python -m pytest -m "not heavy" --durations=10

# Every fault-injection test, and the heavy tests make test leaves out (kill during publish and resume, the DAG
# on a standalone cluster).
test-faults: install
	$(BIN)/python -m pytest -m "fault or heavy"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf lakehouse data airflow_home models reports spark-warehouse
