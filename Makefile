# Thin wrapper over CMake: the README's two commands are `make demo` and `make test`.
BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc)
DEMO_CTD   ?= /tmp/kubelua-demo-containerd

.PHONY: all deps build build-asan test test-fast test-asan demo tour fuzz bench format clean

all: build

deps:
	bash tests/support/deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(BUILD) -j$(JOBS)

build-asan: deps
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DKL_SANITIZE=ON
	cmake --build $(BUILD_ASAN) -j$(JOBS)

# Every test, under ctest: the normal build, then the ASan+UBSan build.
test: build build-asan
	cd $(BUILD) && ctest --output-on-failure
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_stack_use_after_return=1:detect_leaks=1:abort_on_error=1 ctest --output-on-failure

test-fast: build
	cd $(BUILD) && ctest --output-on-failure

# A private containerd, the agent with examples/static-pods/, and a live
# view of its pods until Ctrl-C, which stops the agent and cleans up every
# pod, process and mount it started.
demo: build
	@bash tests/support/containerd.sh start $(DEMO_CTD) >/dev/null
	@trap 'kill $$AGENT 2>/dev/null; wait $$AGENT 2>/dev/null; bash tests/support/containerd.sh clean $(DEMO_CTD) >/dev/null; echo cleaned up' EXIT INT TERM HUP; \
	  mkdir -p /tmp/kubelua-demo; \
	  CONTAINER_RUNTIME_ENDPOINT=unix://$(DEMO_CTD)/containerd.sock \
	    ./$(BUILD)/kubelua agent --config examples/agent.yaml 2>/tmp/kubelua-demo/agent.log & AGENT=$$!; \
	  echo "agent log: /tmp/kubelua-demo/agent.log"; \
	  ./$(BUILD)/kubelua run examples/live.lua

# A tour of the CRI client against a private containerd (examples/demo.lua).
tour: build
	@bash tests/support/containerd.sh start $(DEMO_CTD) >/dev/null
	@trap 'bash tests/support/containerd.sh clean $(DEMO_CTD) >/dev/null' EXIT INT TERM; \
	  CONTAINER_RUNTIME_ENDPOINT=unix://$(DEMO_CTD)/containerd.sock \
	  ./$(BUILD)/kubelua run examples/demo.lua

fuzz: build
	cmake --build $(BUILD) --target fuzz

bench: build
	bash bench/cri/run.sh

format:
	clang-format -i src/*/*.c src/*/*.h include/*.h

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
