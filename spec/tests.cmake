# Every spec file under spec/ runs as one ctest test through the real binary.
# Specs named *_e2e_spec.lua talk to the private containerd that the
# `containerd` fixture starts (and cleans up) for the run.
# Kept short and outside the build tree: unix socket paths are limited to
# 107 bytes, and the clone may live deep in the filesystem.
string(MD5 KL_BUILD_HASH "${CMAKE_BINARY_DIR}")
string(SUBSTRING "${KL_BUILD_HASH}" 0 10 KL_BUILD_HASH)
set(KL_CTD_DIR /tmp/kubelua-ctd-${KL_BUILD_HASH})
add_test(NAME containerd.start
  COMMAND bash ${CMAKE_SOURCE_DIR}/tests/support/containerd.sh start ${KL_CTD_DIR})
set_tests_properties(containerd.start PROPERTIES FIXTURES_SETUP containerd TIMEOUT 120)
add_test(NAME containerd.clean
  COMMAND bash ${CMAKE_SOURCE_DIR}/tests/support/containerd.sh clean ${KL_CTD_DIR})
set_tests_properties(containerd.clean PROPERTIES FIXTURES_CLEANUP containerd TIMEOUT 120)

file(GLOB KL_SPECS RELATIVE ${CMAKE_SOURCE_DIR}/spec ${CMAKE_SOURCE_DIR}/spec/*_spec.lua)
foreach(s ${KL_SPECS})
  string(REPLACE "_spec.lua" "" name ${s})
  add_test(NAME spec.${name}
    COMMAND $<TARGET_FILE:kubelua> run ${CMAKE_SOURCE_DIR}/spec/runner.lua ${CMAKE_SOURCE_DIR}/spec/${s}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(spec.${name} PROPERTIES TIMEOUT 300
    ENVIRONMENT "KUBELUA_LUA_PATH=${CMAKE_SOURCE_DIR}/lua")
  if(name MATCHES "_e2e$")
    set_tests_properties(spec.${name} PROPERTIES FIXTURES_REQUIRED containerd
      RESOURCE_LOCK containerd
      ENVIRONMENT "KUBELUA_TEST_CTD_DIR=${KL_CTD_DIR};KUBELUA_LUA_PATH=${CMAKE_SOURCE_DIR}/lua")
  endif()
endforeach()

# The soak's short form (bench/soak): one minute of churn against a fresh
# containerd of its own; the agent must survive it, keep /healthz up and stop
# cleanly. One minute is inside the agent's warm-up, so the trends are printed
# but not judged (--no-trend); `bench/soak/run.sh` judges them over 10+ min.
# Normal build only: the long form is about the agent, not the sanitizers.
if(NOT KL_SANITIZE)
  add_test(NAME soak.short
    COMMAND bash ${CMAKE_SOURCE_DIR}/bench/soak/run.sh --minutes 1 --interval 2 --no-trend)
  set_tests_properties(soak.short PROPERTIES TIMEOUT 300 RESOURCE_LOCK containerd
    ENVIRONMENT "KUBELUA=$<TARGET_FILE:kubelua>;RESULTS=${CMAKE_BINARY_DIR}/soak;KUBELUA_LUA_PATH=${CMAKE_SOURCE_DIR}/lua")
endif()

# bench/probe's smoke run: every peer but Go (golang-go is the benchmark's
# own need) and the curl processes, 50 targets for 2 s against a private
# nginx; each must complete its probes without a failure. Keeps the
# benchmark and its C reference peers building and working.
if(NOT KL_SANITIZE)
  add_test(NAME bench.probe.smoke
    COMMAND bash ${CMAKE_SOURCE_DIR}/bench/probe/run.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(bench.probe.smoke PROPERTIES TIMEOUT 120
    ENVIRONMENT "NS=50;SECS=2;WARMUP=1;NADDR=4;PEERS=kubelua kubelua0 prober floor curlmulti;CHECK=1;RESULTS=${CMAKE_BINARY_DIR}/bench;KUBELUA_LUA_PATH=${CMAKE_SOURCE_DIR}/lua")
endif()

# The embedding API, from C.
add_executable(embed_test ${CMAKE_SOURCE_DIR}/spec/c/embed_test.c)
target_compile_options(embed_test PRIVATE ${KL_WARN})
target_compile_definitions(embed_test PRIVATE KL_TEST_LUA_DIR="${CMAKE_SOURCE_DIR}/lua")
target_link_libraries(embed_test PRIVATE kubelua_static)
add_test(NAME c.embed COMMAND embed_test)
set_tests_properties(c.embed PROPERTIES TIMEOUT 60)

# The embedding example built against this build's install (cmake --install
# to a temp prefix, then pkg-config) and run against the fixture containerd.
add_test(NAME example.embed
  COMMAND $<TARGET_FILE:kubelua> run ${CMAKE_SOURCE_DIR}/spec/runner.lua ${CMAKE_SOURCE_DIR}/spec/embed_example_e2e.lua
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(example.embed PROPERTIES TIMEOUT 300
  FIXTURES_REQUIRED containerd RESOURCE_LOCK containerd
  ENVIRONMENT "KUBELUA_TEST_CTD_DIR=${KL_CTD_DIR};KUBELUA_LUA_PATH=${CMAKE_SOURCE_DIR}/lua;KUBELUA_TEST_BUILD_DIR=${CMAKE_BINARY_DIR};KUBELUA_TEST_CMAKE=${CMAKE_COMMAND};KUBELUA_TEST_SANITIZE=${KL_SANITIZE}")

# Memcheck over the C code: the embedding test and a few non-e2e specs that
# drive the C bindings (pb, HTTP client and server, watchers, YAML through the
# config and hostile-input specs). Zero errors and zero definite/indirect
# leaks, or the test fails. KUBELUA_JIT=off keeps LuaJIT in its interpreter:
# no machine code patched in place for valgrind to mistranslate, and Lua code
# is not what this checks. spec/valgrind.supp says why it suppresses nothing.
find_program(KL_VALGRIND valgrind)
if(KL_VALGRIND AND NOT KL_SANITIZE) # ASan binaries cannot run under valgrind
  set(KL_VG ${KL_VALGRIND} -q --leak-check=full --errors-for-leak-kinds=definite,indirect
    --error-exitcode=1 --suppressions=${CMAKE_SOURCE_DIR}/spec/valgrind.supp)
  add_test(NAME valgrind.c.embed COMMAND ${KL_VG} $<TARGET_FILE:embed_test>)
  set_tests_properties(valgrind.c.embed PROPERTIES TIMEOUT 120 ENVIRONMENT "KUBELUA_JIT=off")
  foreach(name pb http watch_http config hostile)
    add_test(NAME valgrind.spec.${name}
      COMMAND ${KL_VG} $<TARGET_FILE:kubelua> run ${CMAKE_SOURCE_DIR}/spec/runner.lua
              ${CMAKE_SOURCE_DIR}/spec/${name}_spec.lua
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(valgrind.spec.${name} PROPERTIES TIMEOUT 300
      ENVIRONMENT "KUBELUA_JIT=off;KUBELUA_LUA_PATH=${CMAKE_SOURCE_DIR}/lua;KUBELUA_TEST_BIN=$<TARGET_FILE:kubelua>")
  endforeach()
endif()

# docs/api.md is generated from the modules' exports and doc comments:
# fails on an undocumented export or a stale file
# (regenerate: build/kubelua run scripts/gen_api_docs.lua).
add_test(NAME docs.api
  COMMAND $<TARGET_FILE:kubelua> run ${CMAKE_SOURCE_DIR}/scripts/gen_api_docs.lua --check
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(docs.api PROPERTIES TIMEOUT 120
  ENVIRONMENT "KUBELUA_LUA_PATH=${CMAKE_SOURCE_DIR}/lua")

# The fake gRPC server is itself checked against a real gRPC client (grpcio).
add_test(NAME support.fake_cri
  COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/support/fake_cri_selfcheck.py)
set_tests_properties(support.fake_cri PROPERTIES TIMEOUT 120)

# libFuzzer targets (spec/fuzz/, clang only): saved crashes are replayed, then
# each target fuzzes for 3 s so none of them rots; `make fuzz` runs 60 s each.
find_program(KL_FUZZ_CLANG clang)
if(KL_FUZZ_CLANG)
  add_test(NAME fuzz.short
    COMMAND sh ${CMAKE_SOURCE_DIR}/spec/fuzz/run.sh 3 ${CMAKE_BINARY_DIR}/fuzz)
  set_tests_properties(fuzz.short PROPERTIES TIMEOUT 300
    ENVIRONMENT "KL_FUZZ_CC=${KL_FUZZ_CLANG}")
  add_custom_target(fuzz
    COMMAND ${CMAKE_COMMAND} -E env KL_FUZZ_CC=${KL_FUZZ_CLANG}
            sh ${CMAKE_SOURCE_DIR}/spec/fuzz/run.sh 60 ${CMAKE_BINARY_DIR}/fuzz
    USES_TERMINAL)
endif()
