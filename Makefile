# recorder - `make demo` and `make test` are the contract (see README.md).
# Both run the setup script first; it is idempotent and quick when done.

PREFIX   ?= /usr/local
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

.PHONY: all lib progs setup test demo bench install clean lint vm-test

all: lib progs $(BUILD)/demo/recorder_demo

lib: $(BUILD)/librecorder.so $(BUILD)/librecorder.a

$(BUILD)/obj/%.o: probes/src/%.c $(CORE_HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CORE_CFLAGS) -c $< -o $@

$(BUILD)/librecorder.so: $(CORE_OBJECTS)
	$(CC) -shared -o $@ $^ -lpthread -Wl,-soname,librecorder.so

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

# TEST_MARKERS selects by marker: the VM guest runs 'bpf or guest', the tests
# that face the kernel; the rest behaves the same on any kernel.
TEST_MARKERS ?=
test: setup all
	$(PYTHON) -m pytest tests $(if $(TEST_MARKERS),-m '$(TEST_MARKERS)')

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

install: lib
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/recorder \
	    $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(BUILD)/librecorder.so $(BUILD)/librecorder.a \
	    $(DESTDIR)$(PREFIX)/lib
	install -m 644 probes/include/recorder.h $(DESTDIR)$(PREFIX)/include
	install -m 644 probes/include/recorder/*.h \
	    $(DESTDIR)$(PREFIX)/include/recorder
	sed -e 's|@PREFIX@|$(PREFIX)|g' probes/recorder.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/recorder.pc

clean:
	rm -rf $(BUILD)
