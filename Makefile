# txgate's build and test entry points.
#
#   make venv         .venv with txgate installed editable, plus the test extra
#   make system-deps  Debian packages the end-to-end tests drive (root, apt-get)
#   make run          twistd -n txgate forward with the embedded defaults
#   make test         all three test tiers with trial (TESTS=tests.e2e for one tier)
#   make clean        remove what the targets above made
#   make bench        the side-by-side benchmark suite (issue 8); not part of test
#
# .ci/run calls `make test` and reads trial's summary line.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp
TESTS  ?= tests
TRIAL_ARGS ?=

# command:package pairs for `system-deps`; a package is installed when its
# command is missing. nginx-light is the smallest build with ssl and sendfile.
SYSTEM_DEPS := nginx:nginx-light curl:curl openssl:openssl socat:socat ps:procps unshare:util-linux \
	ip:iproute2 iptables:iptables ip6tables:iptables sipp:sip-tester turnutils_uclient:coturn turnserver:coturn haproxy:haproxy chromium:chromium

.PHONY: all venv setup system-deps run test clean bench-policy bench-intercept bench-reverse bench-peers bench

all: venv

venv setup: $(STAMP)

# The stamp is newer than pyproject.toml once the install has succeeded, so a
# second `make venv` does nothing. editable_mode=compat installs a .pth naming
# the checkout instead of setuptools' import-hook finder: twistd looks for
# twisted/plugins/txgate_plugin.py in the sys.path entries themselves, and the
# finder hides it (`twistd --help` would not list txgate).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q \
		--config-settings editable_mode=compat -e '.[test]'
	@touch $@

# Installs the packages in the shell variable $$missing (set by the recipe
# that expands it) and fails if apt-get does. A temporary policy-rc.d
# (exit 101) stops the nginx package from starting a system nginx on port 80
# as it installs; the tests and the bench start their own.
APT_INSTALL = export DEBIAN_FRONTEND=noninteractive; \
	policy=""; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '\043!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
		policy=/usr/sbin/policy-rc.d; \
	fi; \
	status=0; \
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; } || status=$$?; \
	test -z "$$policy" || rm -f "$$policy"; \
	test "$$status" = 0

# Checks commands, not package names, so a tool installed some other way
# counts; apt-get update runs only when something is missing.
system-deps:
	@set -e; \
	export PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin"; \
	missing=""; \
	for pair in $(SYSTEM_DEPS); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -z "$$missing" ]; then echo "system-deps: all present"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "system-deps: missing:$$missing; run 'make system-deps' as root" >&2; exit 1; \
	fi; \
	echo "system-deps: installing$$missing"; \
	$(APT_INSTALL)

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= txgate forward

# python -m puts the checkout on sys.path, so the `tests` package is found
# however txgate itself was installed.
test: system-deps $(STAMP)
	$(BIN)/python -m twisted.trial $(TRIAL_ARGS) $(TESTS)

clean:
	rm -rf $(VENV) _trial_temp* build dist *.egg-info .hypothesis .ci/test.log
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name dropin.cache -type f -delete

# Benchmarks are not tests: run them on an idle machine and compare ratios.
bench-policy: $(STAMP)
	$(BIN)/python bench/policy_decisions.py

# Starts nginx and twistd on 127.0.0.1 (nginx from `make system-deps`) and
# writes bench/results/intercept-<date>.json.
bench-intercept: $(STAMP)
	$(BIN)/python bench/intercept.py

# Starts two nginx real servers, then txgate reverse, haproxy and nginx in
# turn in front of them, all on 127.0.0.1, drives each with wrk (installed
# here when missing, as system-deps does) and a new-connection client, and
# writes bench/results/reverse-<date>.json. BENCH_ARGS passes options, e.g.
# make bench-reverse BENCH_ARGS='--seconds 3 --only txgate,haproxy'.
BENCH_ARGS ?=
bench-reverse: $(STAMP)
	@export PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin"; \
	command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" != 0 ]; then echo "bench-reverse: wrk missing; run as root or apt-get install wrk" >&2; exit 1; fi; \
		echo "bench-reverse: installing wrk"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk; }; }
	$(BIN)/python bench/reverse.py $(BENCH_ARGS)

# The peers of the side-by-side suite (issue 8). Debian packages are installed
# when their command is missing (squid also when it lacks OpenSSL, since
# ssl_bump needs squid-openssl); mitmproxy and proxy.py go into venvs of their
# own under bench/.peers/ (git ignores it), so their dependencies never meet
# txgate's. A peer that fails to install is only reported: the suite shows it
# as "unavailable (why)" and measures the others.
PEERS := bench/.peers
BENCH_APT := squid:squid-openssl haproxy:haproxy nginx:nginx-light wrk:wrk curl:curl
bench-peers: $(STAMP)
	@export PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin"; \
	missing=""; \
	for pair in $(BENCH_APT); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if command -v squid >/dev/null 2>&1 && ! squid -v 2>/dev/null | grep -q -- --with-openssl; then \
		missing="$$missing squid-openssl"; fi; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "bench-peers: missing:$$missing; run as root to install them (the suite reports them unavailable)" >&2; \
		else \
			echo "bench-peers: installing$$missing"; \
			$(APT_INSTALL) || \
				echo "bench-peers: apt-get could not install$$missing; the suite reports what is missing" >&2; \
		fi; \
	fi; \
	for pair in mitmproxy:mitmdump proxy.py:proxy; do \
		peer="$${pair%%:*}"; venv="$(PEERS)/$$peer"; \
		test -x "$$venv/bin/$${pair#*:}" && continue; \
		echo "bench-peers: pip install $$peer into $$venv"; \
		{ test -x "$$venv/bin/python" || $(PYTHON) -m venv "$$venv"; } && \
		"$$venv/bin/python" -m pip install --disable-pip-version-check -q "$$peer" || \
			echo "bench-peers: $$peer did not install; the suite reports it unavailable" >&2; \
	done

# Every scenario (S1-S7) for every candidate in turn, 3 repeats, on 127.0.0.1;
# prints the table and writes bench/results/suite-<date>-<time>.json. BENCH_ARGS
# passes options, e.g. make bench BENCH_ARGS='--scenarios S1,S2 --seconds 3'.
bench: bench-peers
	$(BIN)/python bench/suite.py $(BENCH_ARGS)
