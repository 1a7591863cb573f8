# remediator — see README.md. Every target creates what it needs on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint check bench format system-deps clean

RUN_STAMP := $(VENV)/.installed-run

# The daemon alone (what `make run` needs) ...
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUN_STAMP)

# ... and with what tests, lint and bench need.
$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start the daemon on the embedded default (SQLite, in-process state, dry-run, ./rules)
##      flags through ARGS, e.g. make run ARGS="--listen 127.0.0.1:9098 --no-dry-run"
run: $(RUN_STAMP)
	$(VENV)/bin/remediator serve $(ARGS)

## system-deps: Debian servers and tools the tests run (installed when missing and root).
##      kubectl renders the Kustomize bundle; the bundle needs its kustomize v5 (kubectl
##      >= 1.27): Debian 12's kubernetes-client (1.20, kustomize v2) is too old for it, and
##      the deploy tests say so — install a current kubectl then. chromium: the console's
##      browser tests drive Debian's build through Playwright (no browser download).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$$missing prometheus-alertmanager"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	[ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$$missing postgresql-15"; \
	[ -x /usr/sbin/dockerd ] || missing="$$missing docker.io"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	dpkg-query -W -f='$${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' \
	  || missing="$$missing busybox-static"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing — install them (apt-get install$$missing) or run as root" >&2; exit 1; \
	  fi; \
	fi

## lint: ruff (format check + lint) and mypy strict
lint: $(STAMP)
	$(VENV)/bin/ruff format --check remediator tests bench
	$(VENV)/bin/ruff check remediator tests bench
	$(VENV)/bin/mypy

## test: install what the tests need, lint, and run the whole suite
test: $(STAMP) system-deps lint
	$(PY) -m pytest -q

## check: validate the rule files in ./rules
check: $(RUN_STAMP)
	$(VENV)/bin/remediator check rules

## bench: load generator against the daemon and a bare aiohttp server; prints figures
bench: $(STAMP) system-deps
	$(PY) -m bench $(ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff format remediator tests bench
	$(VENV)/bin/ruff check --fix remediator tests bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
