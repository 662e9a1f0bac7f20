# jobfleet: the two commands of the README are `make deploy` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON3 ?= python3
IMAGE := jobfleet/bookworm-systemd:latest
SCENARIOS ?= $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
export PATH := $(BIN):$(PATH)
export ANSIBLE_FORCE_COLOR ?= false
export PY_COLORS ?= 0

.PHONY: help bootstrap host venv image deploy test lint pytest molecule bench lab-up lab-down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

bootstrap: host venv image ## install Debian packages, .venv and the systemd test image (idempotent)

host:
	@files/scripts/bootstrap-host

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml | host
	@test -x $(BIN)/python || $(PYTHON3) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -e .
	@touch $@

image: host
	@files/scripts/build-test-image $(IMAGE)

deploy: bootstrap lab-up ## bring up the container lab and deploy the fleet to it
	ansible-playbook playbooks/deploy.yml
	@echo
	@echo "The lab fleet is deployed. Try it:"
	@echo "  docker exec jobfleet-lab-worker1 runuser -u jobfleet -- /opt/shop/current/venv/bin/jobfleet enqueue shop.jobs:succeed 21 --queue default --json"
	@echo "  docker exec jobfleet-lab-worker1 runuser -u jobfleet -- /opt/shop/current/venv/bin/jobfleet job show ID --json"
	@echo "  docker exec jobfleet-lab-worker1 runuser -u jobfleet -- /opt/shop/current/venv/bin/jobfleet enqueue shop.celery_app:rebuild_catalog 10 1.0 --queue catalog --json   # a Celery job"
	@echo "  docker exec jobfleet-lab-worker1 runuser -u jobfleet -- /opt/shop/current/venv/bin/jobfleet status"
	@echo "  docker exec jobfleet-lab-worker1 journalctl -u 'jobfleet-*' -f"
	@echo "Tear it down with: make lab-down"

test: bootstrap lint pytest molecule ## lint, pytest, then every molecule scenario

lint: venv ## ruff, mypy, yamllint, ansible-lint (production profile)
	ruff check src tests bench examples molecule files/scripts/check-argument-specs
	ruff format --check src tests bench examples molecule files/scripts/check-argument-specs
	mypy
	yamllint --strict .
	ansible-lint
	$(BIN)/python files/scripts/check-argument-specs --readme README.md roles

pytest: venv host
	pytest

molecule: bootstrap ## every molecule scenario; destroy runs even when verify fails
	@failed=(); for s in $(SCENARIOS); do \
	  echo "=== molecule test -s $$s"; start=$$SECONDS; \
	  molecule test -s $$s || failed+=("$$s"); \
	  echo "=== molecule $$s: $$((SECONDS - start)) s"; \
	done; \
	if (( $${#failed[@]} )); then echo "molecule scenarios failed: $${failed[*]}" >&2; exit 1; fi

bench: bootstrap ## benchmarks: ratios measured side by side
	@for b in bench/[!_]*.py; do echo "=== $$b"; $(BIN)/python $$b; done
	bench/deploy.sh

lab-up: bootstrap ## start the lab containers
	ansible-playbook playbooks/lab.yml

lab-down: venv ## remove the lab containers
	ansible-playbook playbooks/lab.yml -e lab_state=absent

clean: ## remove the lab, molecule instances, build output and caches
	-@if [ -x $(BIN)/ansible-playbook ]; then $(BIN)/ansible-playbook playbooks/lab.yml -e lab_state=absent; fi
	-@for s in $(SCENARIOS); do $(BIN)/molecule destroy -s $$s >/dev/null 2>&1 || true; done
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
