# recorder - `make demo` and `make test` are the contract (see README.md).
# Both run the setup script first; it is idempotent and quick when done.

PREFIX   ?= /usr/local
SYSCONFDIR ?= /etc
# `make install` puts the CLI in a venv of its own here (Debian's Python,
# which sees Debian's bcc), linked as $(PREFIX)/bin/recorder.
TRACER_HOME ?= /opt/recorder
SYSTEM_PYTHON ?= /usr/bin/python3
BUILD    ?= build
CC       ?= cc
CFLAGS   ?= -O2 -g
CORE_CFLAGS = -std=gnu11 -Wall -Wextra -Werror -fPIC -fvisibility=default \
              -Iprobes/include $(CFLAGS)
VENV     := .venv
PYTHON   := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.provisioned

CORE_SOURCES := $(wildcard probes/src/*.c)
CORE_HEADERS := $(wildcard probes/include/*.h probes/include/recorder/*.h \
                  probes/src/*.h)
CORE_OBJECTS := $(patsubst probes/src/%.c,$(BUILD)/obj/%.o,$(CORE_SOURCES))
TEST_PROGRAMS := $(patsubst tests/progs/%.c,$(BUILD)/progs/%,\
                   $(wildcard tests/progs/*.c))

.PHONY: all lib progs setup test fuzz soak demo bench install install-lib \
        install-tracer clean lint vm-test

all: lib progs $(BUILD)/demo/recorder_demo

lib: $(BUILD)/librecorder.so $(BUILD)/librecorder.a

$(BUILD)/obj/%.o: probes/src/%.c $(CORE_HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -c $< -o $@

# The shared library's ABI is versioned by symbol (probes/abi/librecorder.map):
# an entry point whose signature changed keeps its old version for programs
# linked before (probes/abi/compat.c), under the same soname they ask for.
ABI_MAP := probes/abi/librecorder.map
$(BUILD)/obj/abi/%.o: probes/abi/%.c $(CORE_HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -c $< -o $@

$(BUILD)/librecorder.so: $(CORE_OBJECTS) $(BUILD)/obj/abi/compat.o $(ABI_MAP)
	$(CC) -shared -o $@ $(CORE_OBJECTS) $(BUILD)/obj/abi/compat.o -lpthread \
	    -Wl,-soname,librecorder.so -Wl,--version-script=$(ABI_MAP)

$(BUILD)/librecorder.a: $(CORE_OBJECTS)
	@rm -f $@
	ar rcs $@ $^

# Test programs link the static core: each one is self-contained.
progs: $(TEST_PROGRAMS)

$(BUILD)/progs/%: tests/progs/%.c $(BUILD)/librecorder.a $(CORE_HEADERS) \
                  $(wildcard tests/progs/*.h)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -Wall -Wextra -O2 -g -Iprobes/include $< \
	    $(BUILD)/librecorder.a -lpthread -o $@

$(BUILD)/demo/recorder_demo: demo/recorder_demo.c $(BUILD)/librecorder.a $(CORE_HEADERS)
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -Wall -Wextra -O2 -g -Iprobes/include $< \
	    $(BUILD)/librecorder.a -lpthread -o $@

setup: $(SETUP_STAMP)

# The editable install builds the extension recorder._core from the core's
# sources: a change to them (or to the extension) installs again.
$(SETUP_STAMP): vagrant/provision.sh pyproject.toml setup.py pyapi/recorder/_core.c \
                $(CORE_SOURCES) $(CORE_HEADERS)
	bash vagrant/provision.sh

# TEST_MARKERS selects by marker. Here: all but the tests that run only
# inside the test VM (vm: vsock) or check what it sent (vm_host); the VM guest
# runs those that face the kernel (vagrant/vm-test.sh says which).
TEST_MARKERS ?= not vm and not vm_host
TEST_PATHS ?= tests
test: setup all
	$(PYTHON) -m pytest $(TEST_PATHS) -m '$(TEST_MARKERS)'

# The hostile-input fuzzers of tests/test_hostile_fuzz.py, long (make test
# runs them with a few dozen examples each).
FUZZ_EXAMPLES ?= 20000
fuzz: setup all
	RECORDER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTHON) -m pytest -q \
	    tests/test_hostile_fuzz.py

# 1,000 processes exec and exit under trace --all and daemon --all: the
# controller's fds, RSS and BPF map entries return to their baseline.
soak: setup all
	$(PYTHON) -m pytest -s -q tests/soak_exec_exit.py

# The suite again, inside the Vagrant VM on a stock Debian kernel (TCG, offline;
# the box is cached in /var/cache/recorder/vm). See vagrant/vm-test.sh.
vm-test: setup all
	bash vagrant/vm-test.sh

demo: setup all
	$(PYTHON) -m recorder_tracer.cli.demo

bench: setup all
	$(PYTHON) bench/run.py

lint: setup
	$(VENV)/bin/ruff check .

install: install-lib install-tracer

# The C core: libraries, headers, pkg-config file.
install-lib: lib
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/recorder \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(BUILD)/librecorder.so $(BUILD)/librecorder.a \
	    $(DESTDIR)$(PREFIX)/lib
	install -m 644 probes/include/*.h \
	    $(DESTDIR)$(PREFIX)/include
	install -m 644 probes/include/recorder/*.h \
	    $(DESTDIR)$(PREFIX)/include/recorder
	sed -e 's|@PREFIX@|$(PREFIX)|g' probes/recorder.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/recorder.pc

# The tracer (root): the CLI in its own venv, where `sudo recorder` finds it
# (Debian's Python refuses `sudo pip install`); the daemon's unit (never
# enabled or started here), the example config (an existing one is kept),
# the docs. Reinstalling upgrades the venv in place.
DOCDIR = $(PREFIX)/share/doc/recorder
UNITDIR = $(PREFIX)/lib/systemd/system
install-tracer:
	@test -x $(SYSTEM_PYTHON) || { echo "install: $(SYSTEM_PYTHON) is missing" >&2; exit 1; }
	@$(SYSTEM_PYTHON) -c 'import bcc' 2>/dev/null || echo "install: warning:" \
	    "$(SYSTEM_PYTHON) cannot import bcc: apt install python3-bpfcc" >&2
	test -x $(DESTDIR)$(TRACER_HOME)/venv/bin/python || \
	    $(SYSTEM_PYTHON) -m venv --system-site-packages $(DESTDIR)$(TRACER_HOME)/venv
	$(DESTDIR)$(TRACER_HOME)/venv/bin/python -m pip install -q --upgrade \
	    "$(CURDIR)[tracer]"
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR) \
	    $(DESTDIR)$(SYSCONFDIR)/recorder
	ln -sfn $(TRACER_HOME)/venv/bin/recorder $(DESTDIR)$(PREFIX)/bin/recorder
	sed -e 's|/usr/local/bin/recorder|$(PREFIX)/bin/recorder|' \
	    -e 's|/usr/local/share/doc/recorder|$(DOCDIR)|' \
	    -e 's|/etc/recorder/|$(SYSCONFDIR)/recorder/|' \
	    packaging/recorder-daemon.service \
	    > $(DESTDIR)$(UNITDIR)/recorder-daemon.service
	chmod 644 $(DESTDIR)$(UNITDIR)/recorder-daemon.service
	install -m 644 README.md LICENSE docs/*.md probes/PROBES.md $(DESTDIR)$(DOCDIR)
	install -m 644 packaging/daemon.toml $(DESTDIR)$(DOCDIR)/daemon.toml.example
	test -e $(DESTDIR)$(SYSCONFDIR)/recorder/daemon.toml || install -m 644 \
	    packaging/daemon.toml $(DESTDIR)$(SYSCONFDIR)/recorder/daemon.toml
	@echo "installed $(PREFIX)/bin/recorder -> $(TRACER_HOME)/venv;" \
	    "to run the daemon: systemctl daemon-reload &&" \
	    "systemctl enable --now recorder-daemon"

clean:
	rm -rf $(BUILD)
